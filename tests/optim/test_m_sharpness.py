"""m-sharpness (group_size): per-group perturbations, their cost, their reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msam_jax
from msam_jax.optim import all_but_biases
from helpers import everyday
import variants_oracle as oracle
import variants_problem as vp

LR = 0.1


def sgd():
  return msam_jax.sgd(LR, momentum=0.9, weight_decay=5e-3)


VARIANTS = {  # name: (msam_jax transformation with group_size, oracle direction per group)
  "sam": (lambda m: msam_jax.sam(sgd(), rho=0.1, group_size=m), lambda p, x, y, t: oracle.sam_gradient(p, x, y, 0.1)),
  "asam_samsunglabs": (
    lambda m: msam_jax.asam(sgd(), rho=0.5, eta=0.01, mask=all_but_biases, group_size=m),
    lambda p, x, y, t: oracle.samsunglabs_asam(p, x, y, 0.5, 0.01),
  ),
  "asam_davda54": (
    lambda m: msam_jax.asam(sgd(), rho=1.0, eta=0.0, group_size=m),
    lambda p, x, y, t: oracle.davda54_adaptive_sam(p, x, y, 1.0),
  ),
  "gsam": (
    lambda m: msam_jax.gsam(sgd(), rho=0.1, alpha=0.3, group_size=m),
    lambda p, x, y, t: oracle.big_vision_gsam(p, x, y, 0.1, 0.3, True),
  ),
  "gsam_clean": (
    lambda m: msam_jax.gsam(sgd(), rho=0.1, alpha=0.3, minimize_fp=False, group_size=m),
    lambda p, x, y, t: oracle.big_vision_gsam(p, x, y, 0.1, 0.3, False),
  ),
}


@pytest.mark.parametrize("name", everyday(sorted(VARIANTS), keep=("asam_davda54", "gsam")))
def test_group_size_batch_is_group_size_none_bit_for_bit(x64, name):
  make, _ = VARIANTS[name]
  vp.assert_trees_equal(vp.run(make(oracle.BATCH), steps=4), vp.run(make(None), steps=4))


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("m", everyday([1, 2, 4], keep=(2,)))
def test_group_size_m_is_the_mean_of_per_group_directions(x64, name, m):
  """The numpy oracle perturbs each group of m consecutive examples from its own gradient."""
  make, direction = VARIANTS[name]
  expected = oracle.trajectory(direction, [LR] * oracle.STEPS, group_size=m)
  vp.assert_trajectory_close(vp.run(make(m)), expected)
  if m == 2 and name == "sam":  # not vacuous: groups change the trajectory
    whole = oracle.trajectory(direction, [LR] * oracle.STEPS)
    assert not np.allclose(whole[-1]["0.weight"], expected[-1]["0.weight"], rtol=1e-6, atol=0)


def test_sam_group_size_two_steps_by_hand(x64):
  """Two examples, L_j(w) = a_j w^2 / 2 (gradient a_j w), m = 1, SGD without momentum.

  w = 1, a = (2, 4), rho = 0.05: e_j = +0.05 for both, g2_j = a_j 1.05 = (2.1, 4.2),
  mean 3.15, w = 1 - 0.1 * 3.15 = 0.685. Whole batch: g = 3, e = 0.05, g2 = 3.15 too
  (one weight: every direction is the same), so also check a second weight.
  """
  a = jnp.asarray([[2.0, 0.0], [0.0, 4.0]])  # example j only sees weight j

  def loss_fn(params, indices=None):
    rows = a if indices is None else a[indices]
    return 0.5 * rows @ (params["w"] ** 2)

  params = {"w": jnp.asarray([1.0, 1.0])}
  tx = msam_jax.sam(msam_jax.sgd(0.1, momentum=0.0), rho=0.05, group_size=1)
  updates, _ = tx.update(None, tx.init(params), params, loss_fn=loss_fn)
  # Group j: g1 = a_jj w_j e_j (only weight j), e = 0.05 e_j, g2 = a_jj (1.05) e_j;
  # the mean over the 2 groups: (2.1 / 2, 4.2 / 2).
  np.testing.assert_allclose(params["w"] + updates["w"], [1 - 0.1 * 1.05, 1 - 0.1 * 2.1], rtol=1e-12)
  # Whole batch: g = (1, 2), e = 0.05 (1, 2) / sqrt(5), g2 = a w_e / 2.
  whole = msam_jax.sam(msam_jax.sgd(0.1, momentum=0.0), rho=0.05)
  grads = jax.grad(lambda p: jnp.mean(loss_fn(p)))(params)
  updates, _ = whole.update(grads, whole.init(params), params, loss_fn=loss_fn)
  e = 0.05 * np.array([1.0, 2.0]) / np.sqrt(5.0)
  np.testing.assert_allclose(params["w"] + updates["w"], 1 - 0.1 * np.array([2.0, 4.0]) * (1 + e) / 2, rtol=1e-12)


# --------------------------------------------------------------------------- cost


@pytest.mark.parametrize("name", ["sam", "asam_samsunglabs", "gsam"])
@pytest.mark.parametrize("m", everyday([None, 2, oracle.BATCH], keep=(2,)))
def test_loss_fn_evaluations_two_gradients_per_example(x64, name, m):
  """Counted at run time, the caller's first pass included: None (and m = B): two
  whole-batch evaluations (the caller's first pass, the second pass); m (the caller
  passes grads=None): each group of m consecutive examples twice, nothing else."""
  make, _ = VARIANTS[name]
  log = []
  tx = make(m)
  params0, xs, ys = oracle.problem()
  params = jax.tree.map(jnp.asarray, oracle.to_flax(params0))
  step = jax.jit(vp.make_step(tx, log, pass_grads=m in (None, oracle.BATCH)))
  state = tx.init(params)
  for t in range(2):
    params, state = step(params, state, jnp.asarray(xs[t]), jnp.asarray(ys[t]))
    jax.effects_barrier()
    if m in (None, oracle.BATCH):
      assert log == [None, None]
    else:
      groups = [np.arange(i, i + m) for i in range(0, oracle.BATCH, m)]
      assert len(log) == 2 * len(groups)
      assert sorted(map(tuple, log)) == sorted(map(tuple, groups * 2))
    log.clear()


def test_the_callers_first_pass_gradient_is_dead_code_with_groups(x64):
  """With group_size the whole-batch gradient passed as `grads` is unused: XLA drops it,
  so a step that computes it costs what one that passes None costs (two gradients)."""
  tx = msam_jax.sam(sgd(), rho=0.1, group_size=2)
  params0, xs, ys = oracle.problem()
  params = jax.tree.map(jnp.asarray, oracle.to_flax(params0))
  args = (params, tx.init(params), jnp.asarray(xs[0]), jnp.asarray(ys[0]))
  flops = []
  for pass_grads in (True, False):
    compiled = jax.jit(vp.make_step(tx, pass_grads=pass_grads)).lower(*args).compile()
    flops.append(compiled.cost_analysis()["flops"])
  assert flops[0] == flops[1] > 0
  with_groups, without = [
    jax.jit(vp.make_step(t, pass_grads=p)).lower(*args).compile().cost_analysis()["flops"]
    for t, p in ((tx, False), (msam_jax.sam(sgd(), rho=0.1), True))
  ]
  assert with_groups < 1.5 * without  # two gradients per example either way, not three


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make", [msam_jax.sam, msam_jax.asam, msam_jax.gsam])
@pytest.mark.parametrize("group_size", [0, -2, 2.5, True])
def test_bad_group_size_raises_at_construction(make, group_size):
  with pytest.raises(ValueError, match=r"^group_size must be"):
    make(msam_jax.sgd(0.1), group_size=group_size)


@pytest.mark.parametrize("make", [msam_jax.sam, msam_jax.asam, msam_jax.gsam])
def test_group_size_not_dividing_the_batch_fails_at_the_first_update(x64, make):
  with pytest.raises(
    ValueError,
    match=r"^group_size must divide the batch size, got "
    r"group_size=3 for a batch of 8",
  ):
    vp.run(make(sgd(), group_size=3), steps=1)
