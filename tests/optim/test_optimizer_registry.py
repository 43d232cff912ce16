"""The optimizer table: consistent entries, families that agree with the states, build()."""

import inspect

import jax
import jax.numpy as jnp
import optax
import pytest

import msam_jax
from msam_jax.optim import needs_loss_fn, perturbs_params, registry

from helpers import assert_trees_equal, everyday

PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.25]]), "b": jnp.array([0.1, -0.2])}
GRADS = {"w": jnp.array([[0.3, 0.1], [-0.2, 0.4]]), "b": jnp.array([0.05, 0.5])}


def loss_fn(params, indices=None):
  x = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.5, 0.5], [2.0, -1.0]])
  x = x if indices is None else x[indices]
  return jnp.sum(jnp.tanh(x @ params["w"] + params["b"]) ** 2, axis=-1)


def one_update(tx, params=PARAMS):
  extra = {"loss_fn": loss_fn, "losses": loss_fn(params)} if needs_loss_fn(tx) else {}
  return tx.update(GRADS, tx.init(params), params, **extra)


@pytest.mark.parametrize("name", registry.names())
def test_entry_is_consistent(name):
  entry = registry.get(name)
  assert entry.name == name and entry.family in registry.FAMILIES
  assert registry.get(entry.base).family == "base"
  assert entry.family != "base" or entry.base == name
  accepted = inspect.signature(entry.factory).parameters
  for keyword in (*entry.injected, *entry.config_fields):
    assert keyword in accepted, f"{name}: {entry.factory.__name__} takes no {keyword!r}"
  assert ("base" in accepted) == (entry.family == "sam")


@pytest.mark.parametrize("name", registry.names())
def test_family_agrees_with_what_the_state_says(name):
  family = registry.get(name).family
  tx = registry.build(name, learning_rate=0.1, rho=0.05)
  for wrapped in (tx, optax.chain(optax.clip_by_global_norm(1.0), tx)):
    state = wrapped.init(PARAMS)
    assert perturbs_params(state) == (family == "msam")
    assert needs_loss_fn(state) == (family == "sam")
    assert perturbs_params(jax.eval_shape(wrapped.init, PARAMS)) == (family == "msam")


def test_perturbs_params_sees_through_wrappers_and_is_false_elsewhere():
  injected = optax.inject_hyperparams(msam_jax.adamw_msam)(learning_rate=0.1, rho=0.1)
  assert perturbs_params(optax.MultiSteps(injected, 2).init(PARAMS))
  assert not perturbs_params(optax.adam(0.1).init(PARAMS))
  assert not perturbs_params(msam_jax.sam(msam_jax.sgd(0.1)).init(PARAMS))


@pytest.mark.parametrize(
  "name,expected",
  [
    ("sgd", lambda: msam_jax.sgd(0.1, momentum=0.5, weight_decay=1e-2, nesterov=True)),
    ("msam", lambda: msam_jax.msam(0.1, momentum=0.5, rho=0.2, weight_decay=1e-2)),
    ("adamw", lambda: msam_jax.adamw(0.1, b1=0.8, weight_decay=1e-2)),
    ("adamw_msam", lambda: msam_jax.adamw_msam(0.1, b1=0.8, weight_decay=1e-2, rho=0.2)),
    ("sam", lambda: msam_jax.sam(msam_jax.sgd(0.1, momentum=0.5, weight_decay=1e-2, nesterov=True), rho=0.2)),
    (
      "esam",
      lambda: msam_jax.esam(
        msam_jax.sgd(0.1, momentum=0.5, weight_decay=1e-2, nesterov=True), rho=0.2, beta=1.0, gamma=0.5
      ),
    ),
    (
      "looksam",
      lambda: msam_jax.looksam(
        msam_jax.sgd(0.1, momentum=0.5, weight_decay=1e-2, nesterov=True), rho=0.2, k=3, alpha=0.5
      ),
    ),
    ("adamw_sam", lambda: msam_jax.sam(msam_jax.adamw(0.1, b1=0.8, weight_decay=1e-2), rho=0.2)),
    # Lion's options are optax.lion's (b1, b2, weight decay, ...): it takes those it is given.
    ("lion", lambda: optax.lion(0.1, b1=0.8, weight_decay=1e-2)),
    ("lion_msam", lambda: msam_jax.msam_of(optax.lion(0.1, b1=0.8, weight_decay=1e-2), rho=0.2)),
    ("rst", lambda: msam_jax.rst(msam_jax.sgd(0.1, momentum=0.5, weight_decay=1e-2, nesterov=True), rho=0.2)),
  ],
)
def test_build_hands_each_factory_the_hyperparameters_it_takes(name, expected):
  """One config-like set for all; each takes its own (msam no nesterov, sgd no rho, ...)."""
  hyper = dict(
    learning_rate=0.1,
    momentum=0.5,
    weight_decay=1e-2,
    nesterov=True,
    b1=0.8,
    rho=0.2,
    beta=1.0,
    gamma=0.5,
    k=3,
    alpha=0.5,
    unrelated="ignored",
  )
  assert_trees_equal(one_update(registry.build(name, **hyper)), one_update(expected()))


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown optimizer 'adam'; choose one of sgd, msam, sam"):
    registry.get("adam")
  with pytest.raises(ValueError, match="unknown optimizer"):
    registry.build("adam", learning_rate=0.1)


def test_lion_options_are_its_own():
  """Lion's options and their defaults are optax.lion's (b2 0.99, weight decay 1e-3), not Adam's or SGD's;
  each one reaches the transformation (a changed value changes the second step)."""
  for name in ("lion", "lion_msam"):
    assert registry.get(name).config_fields == {}
    options = registry.options(name)
    assert (options["b1"], options["b2"], options["weight_decay"]) == (0.9, 0.99, 1e-3)

  def two_updates(tx):
    state, params = tx.init(PARAMS), PARAMS
    for grads in (GRADS, jax.tree.map(lambda g: -0.05 * g, GRADS)):  # the second step's sign needs b1
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params

  expected = two_updates(msam_jax.msam_of(optax.lion(0.1), rho=0.2))
  assert_trees_equal(two_updates(registry.build("lion_msam", learning_rate=0.1, rho=0.2)), expected)
  for other in ({"b1": 0.5}, {"b2": 0.5}, {"weight_decay": 0.5}):
    changed = two_updates(registry.build("lion_msam", learning_rate=0.1, rho=0.2, **other))
    assert_trees_equal(changed, two_updates(msam_jax.msam_of(optax.lion(0.1, **other), rho=0.2)))
    assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(changed), jax.tree.leaves(expected))), other


# sgd, adamw, msam, adamw_msam and msam_of are tests/optim/test_conventions.py's.
_MULTI_STEPS_NAMES = [n for n in registry.names() if registry.get(n).family == "sam" or registry.get(n).base == "lion"]


@pytest.mark.parametrize("name", everyday(_MULTI_STEPS_NAMES, keep=[n for n in _MULTI_STEPS_NAMES if n != "lion"]))
def test_multi_steps_composes_with_lion_and_lion_msam_and_is_refused_by_the_sam_family(name):
  """What docs/optimizers.md says of `optax.MultiSteps`, by registry name: lion and
  lion_msam step once every k micro-batches; every SAM-family name raises at the
  first update (its second gradient would be the last micro-batch's alone)."""
  k = 2
  tx = optax.MultiSteps(registry.build(name, learning_rate=0.1, rho=0.05), every_k_schedule=k)
  params, state = PARAMS, tx.init(PARAMS)
  if registry.get(name).family == "sam":
    with pytest.raises(ValueError, match="cannot run inside optax.MultiSteps"):
      tx.update(GRADS, state, params, loss_fn=loss_fn, losses=loss_fn(params))
    return

  @jax.jit
  def moved_at_each_update(params, state):
    moved = []
    for _ in range(2 * k):
      updates, state = tx.update(GRADS, state, params)
      moved.append(jnp.any(jnp.stack([jnp.any(u != 0) for u in jax.tree.leaves(updates)])))
      params = optax.apply_updates(params, updates)
    return jnp.stack(moved)

  assert moved_at_each_update(params, state).tolist() == [(i + 1) % k == 0 for i in range(2 * k)]
