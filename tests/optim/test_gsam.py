"""GSAM against big_vision's gsam_gradient (numpy transcription), its reductions, gsam_rho."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax.optim import schedules
import variants_oracle as oracle
import variants_problem as vp

LR_MAX, LR_MIN, RHO_MAX, RHO_MIN, MOMENTUM, WD = 0.2, 0.02, 0.1, 0.02, 0.9, 5e-3


def cosine_lr(t):
  """The learning rate of update t, written out: LR_MAX down to LR_MIN over STEPS updates."""
  return LR_MIN + (LR_MAX - LR_MIN) * 0.5 * (1 + math.cos(math.pi * t / oracle.STEPS))


LR_SCHEDULE = optax.cosine_decay_schedule(LR_MAX, decay_steps=oracle.STEPS, alpha=LR_MIN / LR_MAX)


def sgd(lr=LR_SCHEDULE):
  return msam_jax.sgd(lr, momentum=MOMENTUM, weight_decay=WD)


def rho_schedule():
  return schedules.gsam_rho(LR_SCHEDULE, lr_max=LR_MAX, lr_min=LR_MIN, rho_max=RHO_MAX, rho_min=RHO_MIN)


@pytest.mark.parametrize("minimize_fp", [True, False])
def test_gsam_matches_big_vision(x64, minimize_fp):
  alpha = 0.4
  lrs = [cosine_lr(t) for t in range(oracle.STEPS)]

  def direction(p, x, y, t):
    rho = oracle.gsam_rho(lrs[t], LR_MAX, LR_MIN, RHO_MAX, RHO_MIN)
    return oracle.big_vision_gsam(p, x, y, rho, alpha, minimize_fp)

  expected = oracle.trajectory(direction, lrs)
  got = vp.run(msam_jax.gsam(sgd(), rho=rho_schedule(), alpha=alpha, minimize_fp=minimize_fp))
  vp.assert_trajectory_close(got, expected)
  # Not vacuous: alpha matters, and so does the branch.
  sam_like = vp.run(msam_jax.gsam(sgd(), rho=rho_schedule(), alpha=0.0), steps=oracle.STEPS)
  assert not np.allclose(sam_like[-1]["Dense_0"]["kernel"], got[-1]["Dense_0"]["kernel"], rtol=1e-6, atol=0)


def test_gsam_alpha_zero_is_sam_bit_for_bit(x64):
  vp.assert_trees_equal(
    vp.run(msam_jax.gsam(sgd(0.1), rho=0.05, alpha=0.0), steps=4), vp.run(msam_jax.sam(sgd(0.1), rho=0.05), steps=4)
  )


def test_gsam_rho_max_equal_rho_min_alpha_zero_is_sam(x64):
  rho = schedules.gsam_rho(LR_SCHEDULE, LR_MAX, LR_MIN, rho_max=0.05, rho_min=0.05)
  got = vp.run(msam_jax.gsam(sgd(), rho=rho, alpha=0.0), steps=4)
  expected = vp.run(msam_jax.sam(sgd(), rho=0.05), steps=4)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-14)


def test_gsam_without_minimize_fp_and_alpha_zero_is_the_base(x64):
  got = vp.run(msam_jax.gsam(sgd(0.1), rho=0.05, alpha=0.0, minimize_fp=False), steps=4)
  vp.assert_trees_equal(got, vp.run_base(sgd(0.1), steps=4))


@pytest.mark.parametrize("minimize_fp", [True, False])
def test_gsam_rho_zero_is_the_base_bit_for_bit(x64, minimize_fp):
  # rho = 0: gr = g, and the part of one orthogonal to the other is 0 up to round-off,
  # which alpha = 0 removes; with alpha > 0 it would not be the base bit for bit.
  got = vp.run(msam_jax.gsam(sgd(0.1), rho=0.0, alpha=0.0, minimize_fp=minimize_fp), steps=4)
  vp.assert_trees_equal(got, vp.run_base(sgd(0.1), steps=4))


def test_gsam_rho_zero_with_alpha_is_the_base_to_round_off(x64):
  got = vp.run(msam_jax.gsam(sgd(0.1), rho=0.0, alpha=0.5), steps=4)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(vp.run_base(sgd(0.1), steps=4))):
    np.testing.assert_allclose(a, b, rtol=1e-13)


# ------------------------------------------------------------------------- gsam_rho


def test_gsam_rho_follows_the_learning_rate_and_is_clamped():
  warmup = optax.warmup_cosine_decay_schedule(0.0, peak_value=1.0, warmup_steps=5, decay_steps=20, end_value=0.5)
  rho = schedules.gsam_rho(warmup, lr_max=1.0, lr_min=0.5, rho_max=0.2, rho_min=0.05)
  clamped = 0
  for count in range(25):
    lr = float(warmup(count))
    raw = 0.05 + (0.2 - 0.05) * (lr - 0.5) / (1.0 - 0.5)
    clamped += raw < 0.05
    np.testing.assert_allclose(float(rho(count)), min(max(raw, 0.05), 0.2), rtol=1e-6)
  # During the warm-up from 0 the reference's rho drops below rho_min (negative at first).
  assert clamped >= 2 and 0.05 + 0.15 * (float(warmup(0)) - 0.5) / 0.5 < 0
  assert float(rho(0)) == pytest.approx(0.05)
  assert float(rho(5)) == pytest.approx(0.2)


def test_gsam_rho_with_a_constant_learning_rate_is_rho_max():
  assert float(schedules.gsam_rho(0.1, lr_max=0.1, lr_min=0.1, rho_max=0.3, rho_min=0.0)(7)) == 0.3
  rho = schedules.gsam_rho(0.05, lr_max=0.1, lr_min=0.0, rho_max=0.3, rho_min=0.1)
  np.testing.assert_allclose(float(rho(0)), 0.2, rtol=1e-7)


def test_gsam_rho_is_jittable():
  rho = rho_schedule()
  np.testing.assert_allclose(jax.jit(rho)(jnp.asarray(3)), rho(3), rtol=1e-6)


@pytest.mark.parametrize(
  "make, argument",
  [
    (lambda: msam_jax.gsam(msam_jax.sgd(0.1), rho=-0.05), "rho"),
    (lambda: msam_jax.gsam(msam_jax.sgd(0.1), alpha=-0.1), "alpha"),
    (lambda: msam_jax.gsam(msam_jax.sgd(0.1), alpha=1.1), "alpha"),
    (lambda: msam_jax.gsam(msam_jax.sgd(0.1), minimize_fp="yes"), "minimize_fp"),
    (lambda: msam_jax.gsam(msam_jax.sgd(0.1), group_size=2.5), "group_size"),
    (lambda: schedules.gsam_rho(0.1, 0.1, 0.0, rho_max=0.1, rho_min=0.2), "rho_min"),
    (lambda: schedules.gsam_rho(0.1, lr_max=0.01, lr_min=0.1, rho_max=0.1, rho_min=0.0), "lr_max"),
    (lambda: schedules.gsam_rho(0.1, 0.1, 0.0, rho_max=-0.1, rho_min=-0.2), "rho_max"),
  ],
)
def test_bad_hyperparameters_raise_naming_the_argument(make, argument):
  with pytest.raises(ValueError, match=rf"^{argument} must be"):
    make()


def test_good_edge_values_are_accepted():
  msam_jax.gsam(msam_jax.sgd(0.1), alpha=0.0)
  msam_jax.gsam(msam_jax.sgd(0.1), alpha=1.0, minimize_fp=False)


@pytest.mark.parametrize("name", ["asam", "gsam"])
def test_under_inject_hyperparams_and_seen_by_needs_loss_fn(x64, name):
  """rho (and eta / alpha) injectable; same numbers; the training loop sees a loss_fn user."""
  from msam_jax.optim import all_but_biases, current_hyperparams, needs_loss_fn

  if name == "asam":
    plain = msam_jax.asam(sgd(0.1), rho=0.4, eta=0.02, mask=all_but_biases)
    injected = optax.inject_hyperparams(msam_jax.asam, static_args=("base", "mask"))(
      base=sgd(0.1), rho=0.4, eta=0.02, mask=all_but_biases
    )
  else:
    plain = msam_jax.gsam(sgd(0.1), rho=0.05, alpha=0.3)
    injected = optax.inject_hyperparams(msam_jax.gsam, static_args=("base", "minimize_fp"))(
      base=sgd(0.1), rho=0.05, alpha=0.3
    )
  assert needs_loss_fn(plain) and needs_loss_fn(injected)
  for a, b in zip(jax.tree.leaves(vp.run(plain, steps=3)), jax.tree.leaves(vp.run(injected, steps=3))):
    np.testing.assert_allclose(a, b, rtol=1e-13)
  state = injected.init(oracle.to_flax(oracle.problem()[0]))
  assert "rho" in current_hyperparams(state)
