"""ASAM, GSAM and m-sharpness at scale: one jitted step without host syncs, wide norms
for bfloat16 parameters, sharding-invariant results, and the collectives of a grouped step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import msam_jax
from msam_jax.optim import all_but_biases, schedules
from helpers import everyday, iter_eqns
import variants_problem as vp

BATCH, IN, HIDDEN, CLASSES = 16, 6, 16, 8
SGD = lambda: msam_jax.sgd(0.05, momentum=0.9, weight_decay=5e-3)
OPTIMIZERS = {
  "asam": lambda: msam_jax.asam(SGD(), rho=0.5, mask=all_but_biases),
  "gsam": lambda: msam_jax.gsam(
    SGD(), rho=schedules.gsam_rho(optax.linear_schedule(0.05, 0.01, 10), 0.05, 0.01, 0.2, 0.05), alpha=0.3
  ),
  "gsam_clean": lambda: msam_jax.gsam(SGD(), rho=0.2, alpha=0.3, minimize_fp=False),
  "sam_m2": lambda: msam_jax.sam(SGD(), rho=0.2, group_size=2),
  "asam_m2": lambda: msam_jax.asam(SGD(), rho=0.5, eta=0.0, group_size=2),
  "gsam_m2": lambda: msam_jax.gsam(SGD(), rho=0.2, alpha=0.3, group_size=2),
}


def problem(dtype=jnp.float32):
  k = jax.random.split(jax.random.key(0), 4)
  params = {
    "Dense_0": {"kernel": jax.random.normal(k[0], (IN, HIDDEN), dtype) * 0.4, "bias": jnp.zeros((HIDDEN,), dtype)},
    "Dense_1": {
      "kernel": jax.random.normal(k[1], (HIDDEN, CLASSES), dtype) * 0.4,
      "bias": jnp.zeros((CLASSES,), dtype),
    },
  }
  x = jax.random.normal(k[2], (BATCH, IN), dtype)
  y = jax.random.randint(k[3], (BATCH,), 0, CLASSES)
  return params, x, y


@pytest.mark.parametrize("name", everyday(sorted(OPTIMIZERS), keep=("asam", "gsam_m2")))
def test_update_is_one_jitted_function_without_host_transfers(name):
  tx = OPTIMIZERS[name]()
  params, x, y = problem()
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(vp.make_step(tx))(params, state, x, y)
  assert not [e for e in iter_eqns(jaxpr.jaxpr) if "callback" in e.primitive.name]
  step = jax.jit(vp.make_step(tx), donate_argnums=(0, 1))
  step(params, state, x, y)  # compile outside the guard
  params, x, y = problem()
  state = tx.init(params)
  with jax.transfer_guard("disallow"):
    for _ in range(3):
      params, state = step(params, state, x, y)
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", everyday(sorted(OPTIMIZERS), keep=("asam", "gsam_m2")))
def test_norms_and_dot_products_are_float32_for_bfloat16_params(name):
  tx = OPTIMIZERS[name]()
  params, x, y = problem(jnp.bfloat16)
  x = x.astype(jnp.float32)

  def loss_fn(p, indices=None):  # the model in float32: every bfloat16 reduction is the optimizer's
    p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    return vp.per_example_loss(p, x, y) if indices is None else vp.per_example_loss(p, x[indices], y[indices])

  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn))(grads, state, params)
  reductions = [e for e in iter_eqns(jaxpr.jaxpr) if e.primitive.name in ("reduce_sum", "dot_general", "reduce_max")]
  assert reductions
  assert all(v.aval.dtype != jnp.bfloat16 for e in reductions for v in e.invars), [
    str(e) for e in reductions if any(v.aval.dtype == jnp.bfloat16 for v in e.invars)
  ]
  updates, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn))(grads, state, params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


def mesh_and_shardings():
  assert jax.device_count() == 8, "tests/conftest.py provides 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  return mesh, NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


@pytest.mark.parametrize("name", everyday(sorted(OPTIMIZERS), keep=("asam", "gsam_m2")))
def test_sharded_parameters_give_the_unsharded_result(x64, name):
  """Params and state sharded along leading dims divisible by 8, the batch along 'data'."""
  _, leading, replicated = mesh_and_shardings()
  shard = lambda tree: jax.tree.map(lambda a: leading if a.ndim and a.shape[0] % 8 == 0 else replicated, tree)
  tx = OPTIMIZERS[name]()
  params, x, y = problem(jnp.float64)
  state = tx.init(params)
  param_shardings, state_shardings = shard(params), shard(state)
  assert param_shardings["Dense_1"]["kernel"] == leading
  plain = jax.jit(vp.make_step(tx))
  sharded = jax.jit(
    vp.make_step(tx),
    in_shardings=(param_shardings, state_shardings, leading, leading),
    out_shardings=(param_shardings, state_shardings),
  )
  results = []
  for step, args in (
    (plain, (params, state, x, y)),
    (sharded, jax.device_put((params, state, x, y), (param_shardings, state_shardings, leading, leading))),
  ):
    p, s, xs, ys = args
    for _ in range(2):
      p, s = step(p, s, xs, ys)
    results.append((p, s))
  (expected, expected_state), (got, got_state) = results
  assert got["Dense_1"]["kernel"].sharding == leading
  for a, b in zip(jax.tree.leaves((got, got_state)), jax.tree.leaves((expected, expected_state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


COLLECTIVE = re.compile(
  r"= .*\b(all-reduce|all-gather|reduce-scatter|collective-permute|"
  r"all-to-all)(-start)?\("
)


def collectives(tx, params, x, y):
  _, data, replicated = mesh_and_shardings()
  state = tx.init(params)
  rep = lambda tree: jax.tree.map(lambda _: replicated, tree)
  step = jax.jit(
    vp.make_step(tx), in_shardings=(rep(params), rep(state), data, data), out_shardings=(rep(params), rep(state))
  )
  hlo = step.lower(params, state, x, y).compile().as_text()
  return [line.strip() for line in hlo.splitlines() if COLLECTIVE.search(line)]


def test_data_parallel_sam_reduces_the_first_pass_gradient():
  """The baseline the grouped step is measured against: two gradient all-reduces."""
  params, x, y = problem()
  found = collectives(msam_jax.sam(SGD(), rho=0.2), params, x, y)
  assert len([c for c in found if "all-reduce" in c]) >= 2, found


def per_device_step(tx, mesh):
  """`vp.make_step` inside `shard_map`: params and state replicated, the batch on 'data'."""

  def local_step(params, state, x, y):
    loss_fn = vp.make_loss_fn(x, y)
    updates, state = tx.update(None, state, params, loss_fn=loss_fn)
    return optax.apply_updates(params, updates), state

  return jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=(P(), P()))


GROUPED = {  # per-device m-sharpness: (with axis_name, the same groups on the whole batch)
  "sam": lambda **kw: msam_jax.sam(SGD(), rho=0.2, **kw),
  "asam": lambda **kw: msam_jax.asam(SGD(), rho=0.5, mask=all_but_biases, **kw),
  "gsam": lambda **kw: msam_jax.gsam(SGD(), rho=0.2, alpha=0.3, **kw),
}


@pytest.mark.parametrize("name", everyday(sorted(GROUPED), keep=("asam",)))
@pytest.mark.parametrize("group_size", [None, 1])
def test_per_device_groups_equal_the_same_groups_on_the_whole_batch(x64, name, group_size):
  """`axis_name="data"` under shard_map (m = per-device batch, or groups inside it) is
  `group_size=m` on the global batch: the devices' batches are its consecutive groups."""
  mesh, _, _ = mesh_and_shardings()
  params, x, y = problem(jnp.float64)
  per_device = GROUPED[name](group_size=group_size, axis_name="data")
  whole = GROUPED[name](group_size=group_size or BATCH // 8)
  sharded = jax.jit(per_device_step(per_device, mesh))
  plain = jax.jit(vp.make_step(whole, pass_grads=False))
  got, got_state = params, per_device.init(params)
  expected, expected_state = params, whole.init(params)
  for _ in range(3):
    got, got_state = sharded(got, got_state, x, y)
    expected, expected_state = plain(expected, expected_state, x, y)
  for a, b in zip(jax.tree.leaves((got, got_state)), jax.tree.leaves((expected, expected_state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
  whole_batch = jax.jit(vp.make_step(GROUPED[name]()))(params, whole.init(params), x, y)[0]
  assert not np.allclose(np.asarray(got["Dense_0"]["kernel"]), np.asarray(whole_batch["Dense_0"]["kernel"]))


def test_groups_of_the_per_device_batch_need_no_reduction_before_the_second_pass():
  """Data parallel with m = per-device batch: the compiled step's only cross-device
  collective is the all-reduce of the mean second-pass gradient (against the two of
  `test_data_parallel_sam_reduces_the_first_pass_gradient`)."""
  mesh, data, replicated = mesh_and_shardings()
  params, x, y = problem()
  tx = msam_jax.sam(SGD(), rho=0.2, axis_name="data")
  state = tx.init(params)
  rep = lambda tree: jax.tree.map(lambda _: replicated, tree)
  step = jax.jit(
    per_device_step(tx, mesh),
    in_shardings=(rep(params), rep(state), data, data),
    out_shardings=(rep(params), rep(state)),
  )
  found = [
    line.strip() for line in step.lower(params, state, x, y).compile().as_text().splitlines() if COLLECTIVE.search(line)
  ]
  assert len(found) == 1 and "all-reduce" in found[0], found


def test_axis_name_must_be_a_string():
  with pytest.raises(ValueError, match="axis_name"):
    msam_jax.sam(SGD(), axis_name=0)
