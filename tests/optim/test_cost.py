"""What each optimizer costs: state memory, gradient evaluations, sub-batch sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
import optim_oracle as oracle
from helpers import everyday, iter_eqns


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def params_of_size(n: int, dtype=jnp.float32):
  return {"w": jnp.zeros((n, 8), dtype), "b": jnp.zeros((n,), dtype)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_msam_state_is_the_base_state_plus_constant_scalars(dtype):
  extra_msam, extra_adamw_msam = set(), set()
  for n in (10, 1000):
    params = params_of_size(n, dtype)
    sgd = tree_bytes(msam_jax.sgd(0.1).init(params))
    adamw = tree_bytes(msam_jax.adamw(0.1).init(params))
    assert sgd == tree_bytes(params)  # the momentum buffer
    assert adamw >= 2 * tree_bytes(params)
    extra_msam.add(tree_bytes(msam_jax.msam(0.1).init(params)) - sgd)
    extra_adamw_msam.add(tree_bytes(msam_jax.adamw_msam(0.1).init(params)) - adamw)
  # The same few bytes whatever the model size: an int32 count and the float32 scale c.
  assert extra_msam == {8}
  assert extra_adamw_msam == {4}  # AdamW already counts its steps


@pytest.mark.parametrize("name", ["msam", "adamw_msam"])
def test_msam_update_with_donated_buffers_needs_no_momentum_copy(name):
  """The compiled update+apply step writes the new momentum in place.

  Undoing the old perturbation needs c_old * v_old while the step overwrites v;
  msam recomputes that term from the new momentum (constant momentum >= 0.5),
  so XLA needs no copy of the old buffer.
  """
  tx = {"msam": lambda: msam_jax.msam(0.1, weight_decay=5e-4), "adamw_msam": lambda: msam_jax.adamw_msam(0.1)}[name]()
  params = {"w": jnp.ones((512, 384)), "b": jnp.ones((384,))}

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()
  big_copies = [
    line for line in hlo.as_text().splitlines() if " copy(" in line and "f32[512,384]" in line.split("copy(")[0]
  ]
  assert big_copies == []


def mlp_problem(batch_size=16, hidden=12):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"w": jax.random.normal(k1, (hidden, 6)) * 0.3, "v": jax.random.normal(k2, (4, hidden))}
  x = jax.random.normal(k3, (batch_size, 6))
  y = jnp.arange(batch_size) % 4
  seen_indices = []

  def loss_fn(p, indices=None):
    xs, ys = (x, y) if indices is None else (x[indices], y[indices])
    if indices is not None:
      seen_indices.append(indices)
    logits = jnp.tanh(xs @ p["w"].T) @ p["v"].T
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), ys[:, None], axis=1)[:, 0]

  return params, loss_fn, seen_indices


@pytest.mark.parametrize("gamma, kept", [(0.5, 8), (7 / 16, 7), (0.25, 4)])
def test_esam_second_backward_runs_on_a_gathered_sub_batch(gamma, kept):
  batch_size, hidden = 16, 12
  params, loss_fn, seen = mlp_problem(batch_size, hidden)
  tx = msam_jax.esam(msam_jax.sgd(0.1), rho=0.1, beta=0.5, gamma=gamma)
  losses = loss_fn(params)
  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn, losses=losses))(
    grads, tx.init(params), params
  )
  # loss_fn saw static integer indices of shape [floor(gamma B)] ...
  assert [i.shape for i in seen] == [(kept,)]
  assert jnp.issubdtype(seen[0].dtype, jnp.integer)
  # ... and the network ran once on the whole batch (the sharpness forward) and once on the
  # kept examples (the second forward/backward): no full-batch second pass with a mask.
  tanh_shapes = sorted(e.outvars[0].aval.shape for e in iter_eqns(jaxpr.jaxpr) if e.primitive.name == "tanh")
  assert tanh_shapes == sorted([(batch_size, hidden), (kept, hidden)])
  backward_shapes = {e.outvars[0].aval.shape for e in iter_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"}
  assert (kept, hidden) in backward_shapes


def test_esam_without_first_pass_losses_recomputes_them():
  params, loss_fn, _ = mlp_problem()
  tx = msam_jax.esam(msam_jax.sgd(0.1), rho=0.1, gamma=0.5)
  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  with_losses, _ = tx.update(grads, tx.init(params), params, loss_fn=loss_fn, losses=loss_fn(params))
  without, _ = tx.update(grads, tx.init(params), params, loss_fn=loss_fn)
  for a, b in zip(jax.tree.leaves(with_losses), jax.tree.leaves(without)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_esam_keeps_the_whole_batch_from_gamma_099_without_the_sharpness_pass():
  params, loss_fn, seen = mlp_problem()
  tx = msam_jax.esam(msam_jax.sgd(0.1), rho=0.1, gamma=0.995)
  jaxpr = jax.make_jaxpr(lambda s, p: tx.update(p, s, p, loss_fn=loss_fn))(tx.init(params), params)
  assert seen == []  # loss_fn called without indices: the whole batch
  assert sum(e.primitive.name == "tanh" for e in iter_eqns(jaxpr.jaxpr)) == 1


def test_looksam_non_sam_steps_evaluate_no_second_gradient():
  """Run time: the optimizer's loss_fn runs on SAM steps only (counted by a callback)."""
  params, loss_fn, _ = mlp_problem()
  calls = []

  def counted_loss_fn(p, indices=None):
    jax.debug.callback(lambda: calls.append(1))
    return loss_fn(p, indices)

  tx = msam_jax.looksam(msam_jax.sgd(0.1), rho=0.1, k=3)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    updates, state = tx.update(grads, state, params, loss_fn=counted_loss_fn)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  per_step = []
  for _ in range(7):
    params, state = step(params, state)
    jax.effects_barrier()
    per_step.append(len(calls))
    calls.clear()
  assert per_step == [1, 0, 0, 1, 0, 0, 1]

  # Structure: the second pass lives in one branch of a lax.cond, nowhere else.
  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn))(grads, state, params)
  conds = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"]
  assert len(conds) == 1
  tanh_per_branch = [sum(e.primitive.name == "tanh" for e in iter_eqns(b.jaxpr)) for b in conds[0].params["branches"]]
  assert sorted(tanh_per_branch) == [0, 1]
  outside = [e for e in jaxpr.jaxpr.eqns if e is not conds[0]]
  assert not any(e.primitive.name == "tanh" for e in outside)


@pytest.mark.parametrize("name", everyday(["sam", "esam", "looksam", "chained_sam"], keep=("sam",)))
def test_sam_family_composes_under_jit(name):
  """Jitted step == op-by-op step; the state is a pytree jit can carry."""
  sgd = lambda: msam_jax.sgd(0.05, momentum=0.9, weight_decay=5e-3)
  tx = {
    "sam": lambda: msam_jax.sam(sgd(), rho=0.2),
    "esam": lambda: msam_jax.esam(sgd(), rho=0.2, beta=0.5, gamma=0.5),
    "looksam": lambda: msam_jax.looksam(sgd(), rho=0.2, k=2),
    "chained_sam": lambda: optax.chain(optax.clip_by_global_norm(1.0), msam_jax.sam(sgd(), rho=0.2)),
  }[name]()
  jitted = oracle.run(tx, "SGD/A", steps=2, jit=True)
  eager = oracle.run(tx, "SGD/A", steps=2, jit=False)
  for a, b in zip(jitted, eager):
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
