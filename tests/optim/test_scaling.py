"""Ready for large models: jittable without host syncs, sharding-invariant, wide norms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import msam_jax
from msam_jax.optim import registry
from msam_jax.optim.numerics import global_norm

from helpers import everyday, iter_eqns

OPTIMIZERS = registry.names()
PERTURBING = [n for n in OPTIMIZERS if registry.get(n).family != "base"]


def build(name):
  """Every optimizer of the registry: SGD lr 0.05 (momentum 0.9), AdamW lr 0.01; weight decay
  5e-3 except in the bases the SAM family wraps; rho 0.3 (MSAM family) or 0.2; LookSAM k=2."""
  entry = registry.get(name)
  return registry.build(
    name,
    learning_rate=0.05 if entry.base == "sgd" else 0.01,
    momentum=0.9,
    weight_decay=0.0 if entry.family == "sam" else 5e-3,
    rho=0.3 if entry.family == "msam" else 0.2,
    k=2,
  )


BATCH, IN, HIDDEN, CLASSES = 16, 6, 16, 8


def problem(dtype=jnp.float32):
  k = jax.random.split(jax.random.key(0), 4)
  params = {
    "w0": jax.random.normal(k[0], (HIDDEN, IN), dtype) * 0.4,
    "b0": jnp.zeros((HIDDEN,), dtype),
    "w1": jax.random.normal(k[1], (CLASSES, HIDDEN), dtype) * 0.4,
    "b1": jnp.zeros((CLASSES,), dtype),
  }
  x = jax.random.normal(k[2], (BATCH, IN), dtype)
  y = jax.random.randint(k[3], (BATCH,), 0, CLASSES)
  return params, x, y


def per_example_loss(params, x, y):
  logits = jnp.tanh(x @ params["w0"].T + params["b0"]) @ params["w1"].T + params["b1"]
  return -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), y[:, None], 1)[:, 0]


def make_step(tx):
  def step(params, state, x, y):
    def loss_fn(p, indices=None):
      return per_example_loss(p, x, y) if indices is None else per_example_loss(p, x[indices], y[indices])

    grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=loss_fn(params))
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize("name", everyday(OPTIMIZERS, keep=("msam", "sam")))
def test_update_is_one_jitted_function_without_host_transfers(name):
  tx = build(name)
  params, x, y = problem()
  state = tx.init(params)
  step = jax.jit(make_step(tx), donate_argnums=(0, 1))
  jaxpr = jax.make_jaxpr(make_step(tx))(params, state, x, y)
  primitives = {e.primitive.name for e in jaxpr.jaxpr.eqns}
  assert not {p for p in primitives if "callback" in p}, primitives
  step(params, state, x, y)  # compile outside the guard
  params, x, y = problem()
  state = tx.init(params)
  with jax.transfer_guard("disallow"):
    for _ in range(3):
      params, state = step(params, state, x, y)
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", everyday(OPTIMIZERS, keep=("msam", "sam")))
def test_sharded_parameters_give_the_unsharded_result(x64, name):
  """Params, state and batch sharded over 8 devices along their leading dims."""
  assert jax.device_count() == 8, "tests/conftest.py provides 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  leading, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  shard = lambda tree: jax.tree.map(lambda a: leading if a.ndim and a.shape[0] % 8 == 0 else replicated, tree)
  tx = build(name)
  params, x, y = problem(jnp.float64)
  state = tx.init(params)
  param_shardings, state_shardings = shard(params), shard(state)
  assert param_shardings["w0"] == leading and param_shardings["w1"] == leading

  plain_step = jax.jit(make_step(tx))
  sharded_step = jax.jit(
    make_step(tx),
    in_shardings=(param_shardings, state_shardings, leading, leading),
    out_shardings=(param_shardings, state_shardings),
  )
  results = []
  for step, args in (
    (plain_step, (params, state, x, y)),
    (sharded_step, jax.device_put((params, state, x, y), (param_shardings, state_shardings, leading, leading))),
  ):
    p, s, xs, ys = args
    for _ in range(2):  # LookSAM (k=2): a SAM step and a reuse step
      p, s = step(p, s, xs, ys)
    results.append((p, s))
  (expected, expected_state), (got, got_state) = results
  assert got["w0"].sharding == leading
  for a, b in zip(jax.tree.leaves((got, got_state)), jax.tree.leaves((expected, expected_state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(
    msam_jax.eval_params(got, got_state)["w0"], msam_jax.eval_params(expected, expected_state)["w0"], rtol=1e-12
  )


def test_global_norm_accumulates_bfloat16_in_float32():
  # 2^16 ones: a bfloat16 running sum of squares would stall at 256.
  tree = {"a": jnp.ones((256, 256), jnp.bfloat16), "b": jnp.full((3,), 2.0, jnp.bfloat16)}
  norm = global_norm(tree)
  assert norm.dtype == jnp.float32
  np.testing.assert_allclose(norm, np.sqrt(65536 + 12), rtol=1e-6)
  jaxpr = jax.make_jaxpr(global_norm)(tree)
  sums = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "reduce_sum"]
  assert sums and all(e.invars[0].aval.dtype == jnp.float32 for e in sums)


@pytest.mark.parametrize("name", everyday(PERTURBING, keep=("msam", "sam")))
def test_norms_in_updates_are_float32_for_bfloat16_params(name):
  tx = build(name)
  params, x, y = problem(jnp.bfloat16)
  x = x.astype(jnp.float32)

  def loss_fn(p, indices=None):  # the model in float32: every bfloat16 reduction is the optimizer's
    p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    return per_example_loss(p, x, y) if indices is None else per_example_loss(p, x[indices], y[indices])

  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
  extra = {"loss_fn": loss_fn, "losses": loss_fn(params)} if registry.get(name).family == "sam" else {}
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, **extra))(grads, state, params)
  reductions = [e for e in iter_eqns(jaxpr.jaxpr) if e.primitive.name in ("reduce_sum", "dot_general")]
  assert reductions
  assert all(v.aval.dtype != jnp.bfloat16 for e in reductions for v in e.invars), [
    str(e) for e in reductions if any(v.aval.dtype == jnp.bfloat16 for v in e.invars)
  ]

  if registry.get(name).family == "msam":
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert new_state.offset_scale.dtype == jnp.float32
    if name in ("msam", "adamw_msam"):
      direction = new_state.momentum if name == "msam" else new_state.mu
    else:  # msam_of: the base's momentum
      direction = new_state.momentum_of(new_state.base_state)
    norm64 = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(direction)))
    np.testing.assert_allclose(new_state.offset_scale, 0.3 / norm64, rtol=1e-6)
