"""`sam_variant`, the SAM family's shared update: a variant's own state, and the state layouts checkpoints hold."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest

import msam_jax
from msam_jax.optim.sam import sam_variant

X = jnp.array([1.0, 3.0])  # two examples, loss 0.5 (w - x)^2: the mean gradient at w is w - 2


def loss_fn(params, indices=None):
  x = X if indices is None else X[indices]
  return 0.5 * (params["w"] - x) ** 2


class ToyState(NamedTuple):
  count: jax.Array
  passes: jax.Array  # the toy variant's own field: how many second passes it took
  base_state: optax.OptState


def toy(rho=0.5):
  """Second pass on odd updates: the gradient at ``w + rho``; first pass otherwise."""

  def second_pass(inputs):
    shifted = {"w": inputs.params["w"] + inputs.radius}
    g = jax.grad(lambda p: jnp.mean(inputs.loss_fn(p)))(shifted)
    return g, {"passes": inputs.state.passes + 1}

  def first_pass(inputs):
    return inputs.grads, {"passes": inputs.state.passes}

  return sam_variant(
    "toy",
    optax.sgd(1.0),
    rho,
    second_pass,
    first_pass,
    takes_second=lambda inputs: inputs.state.count % 2 == 1,
    state_type=ToyState,
    init_fields=lambda params: {"passes": jnp.zeros([], jnp.int32)},
  )


def run(tx, decide, steps=4):
  params, state, out = {"w": jnp.array(0.0)}, tx.init({"w": jnp.array(0.0)}), []
  for count in range(steps):
    flag = decide(count)
    extra = {} if flag is None else {"second_gradient": flag}
    step = jax.jit(lambda g, s, p, extra=extra: tx.update(g, s, p, loss_fn=loss_fn, **extra))
    grads = jax.grad(lambda p: jnp.mean(loss_fn(p)))(params)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append((float(params["w"]), int(state.passes), int(state.count)))
  return out


# By hand, lr 1, rho 0.5: w 0 -> 2 (g = -2); second pass g = 2.5 - 2 -> 1.5; g = -0.5 -> 2; g = 0.5 -> 1.5.
BY_HAND = [(2.0, 0, 1), (1.5, 1, 2), (2.0, 1, 3), (1.5, 2, 4)]


def test_own_state_follows_the_rule_taken_in_the_lax_cond():
  assert run(toy(), lambda count: None) == BY_HAND


def test_second_gradient_picks_the_rule_when_tracing():
  assert run(toy(), lambda count: count % 2 == 1) == BY_HAND
  assert run(toy(), lambda count: False) == [(2.0, 0, 1), (2.0, 0, 2), (2.0, 0, 3), (2.0, 0, 4)]


def _layout(state):
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return type(state).__name__, [(jax.tree_util.keystr(path), leaf.shape, str(leaf.dtype)) for path, leaf in leaves]


_SGD = [(".base_state[1].trace['b']", (3,), "float32"), (".base_state[1].trace['w']", (2, 3), "float32")]
_DIRECTION = [(".orthogonal_direction['b']", (3,), "float32"), (".orthogonal_direction['w']", (2, 3), "float32")]
# Recorded from the optimizers before they shared `sam_variant`: a checkpoint written then restores into these.
LAYOUTS = {
  "sam": ("SamState", [(".count", (), "int32")] + _SGD),
  "asam": ("SamState", [(".count", (), "int32")] + _SGD),
  "gsam": ("SamState", [(".count", (), "int32")] + _SGD),
  "looksam": ("LookSamState", [(".count", (), "int32")] + _DIRECTION + _SGD),
  "rst": ("RstState", [(".count", (), "int32")] + _SGD),
  "esam": ("EsamState", [(".count", (), "int32"), (".key", (2,), "uint32")] + _SGD),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_state_layout_is_the_one_checkpoints_hold(name):
  tx = getattr(msam_jax, name)(msam_jax.sgd(0.1, momentum=0.9))
  params = {"b": jnp.zeros(3), "w": jnp.ones((2, 3))}
  batch_loss = lambda p, indices=None: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"]) + jnp.zeros(4)
  grads = jax.grad(lambda p: batch_loss(p).mean())(params)
  state = tx.init(params)
  _, after = tx.update(grads, state, params, loss_fn=batch_loss)
  assert _layout(state) == LAYOUTS[name]
  assert _layout(after) == LAYOUTS[name]
