"""The original's schedules (docs/algorithms.md) against their formulas, step by step.

The formulas are written here as the original evaluates them: update `i`
(0-based) of epoch `e` (1-based) runs at ``x = (e - 1) + (i + 1) / spe``; the
optax count of that update is ``(e - 1) spe + i``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax.optim import schedules


def progress(epochs, spe):
  """(count, x) of every update of a run."""
  for e in range(1, epochs + 1):
    for i in range(spe):
      yield (e - 1) * spe + i, (e - 1) + (i + 1) / spe


def start_ramp_cos(base, x, epochs, ramp):
  return base * min(1, x / ramp if ramp else 1) * 0.5 * (1 + math.cos(math.pi * x / epochs))


def cos_warmup(base, x, epochs, warm):
  if x < warm:
    return base * x / warm
  return base * 0.5 * (1 + math.cos(2 * math.pi * (x - warm) / ((epochs - warm) / 0.5)))


def rho_ramp(rho, x, ramp):
  return rho * min(1, x / ramp if ramp else 1)


def rho_jump(rho, x, jump):
  return 0 if x <= jump else rho


def check(schedule, formula, epochs, spe):
  counts, xs = zip(*progress(epochs, spe))
  expected = [formula(x) for x in xs]
  got = np.asarray(jax.jit(jax.vmap(schedule))(np.asarray(counts)))
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
  assert float(schedule(counts[3])) == pytest.approx(expected[3], rel=1e-12)  # unjitted too


@pytest.mark.parametrize("epochs, spe, ramp", [(5, 7, 1.5), (4, 10, 1), (3, 6, 0), (2, 5, 0.3)])
def test_lr_start_ramp_cos(x64, epochs, spe, ramp):
  check(
    schedules.lr_start_ramp_cos(0.1, epochs=epochs, steps_per_epoch=spe, ramp_epochs=ramp),
    lambda x: start_ramp_cos(0.1, x, epochs, ramp),
    epochs,
    spe,
  )


@pytest.mark.parametrize("epochs, spe, warm", [(5, 7, 0.5), (4, 10, 1), (3, 6, 0), (6, 3, 2.5)])
def test_lr_cos_warmup(x64, epochs, spe, warm):
  check(
    schedules.lr_cos_warmup(0.05, epochs=epochs, steps_per_epoch=spe, warmup_epochs=warm),
    lambda x: cos_warmup(0.05, x, epochs, warm),
    epochs,
    spe,
  )


@pytest.mark.parametrize("spe, ramp", [(7, 1.5), (10, 2), (6, 0), (5, 0.3)])
def test_rho_start_ramp(x64, spe, ramp):
  check(schedules.rho_start_ramp(0.3, steps_per_epoch=spe, ramp_epochs=ramp), lambda x: rho_ramp(0.3, x, ramp), 4, spe)


@pytest.mark.parametrize("spe, jump", [(7, 1), (10, 0.3), (10, 0.35), (3, 1 / 3), (6, 0), (5, 2)])
def test_rho_start_jump(x64, spe, jump):
  check(schedules.rho_start_jump(0.3, steps_per_epoch=spe, jump_epochs=jump), lambda x: rho_jump(0.3, x, jump), 4, spe)


def test_schedules_drive_an_injected_optimizer():
  """A schedule's value reaches the update with the matching count (inject_hyperparams)."""
  rho = schedules.rho_start_jump(0.3, steps_per_epoch=2, jump_epochs=1)
  lr = schedules.lr_cos_warmup(0.1, epochs=3, steps_per_epoch=2, warmup_epochs=1)
  tx = optax.inject_hyperparams(msam_jax.msam)(learning_rate=lr, rho=rho)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  seen = []
  for _ in range(6):
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
    h = msam_jax.optim.current_hyperparams(state)
    seen.append((float(h["learning_rate"]), float(h["rho"])))
  xs = [x for _, x in progress(3, 2)]
  np.testing.assert_allclose(seen, [(cos_warmup(0.1, x, 3, 1), rho_jump(0.3, x, 1)) for x in xs], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("family", ["msam", "sam"])
def test_late_sam_steps_as_its_base_until_the_jump(x64, family):
  """docs/choosing.md, late SAM: under rho_start_jump every step before the jump is the base's step."""
  spe, jump = 3, 2  # the jump after update 6 of 12
  rho = schedules.rho_start_jump(0.3, steps_per_epoch=spe, jump_epochs=jump)
  x = jax.random.normal(jax.random.key(0), (16, 3))

  def losses(p, indices=None):  # per-example losses; no optimizer here selects examples
    return (jnp.tanh(x @ p["w"]) - x[:, 0]) ** 2

  base = lambda: msam_jax.sgd(0.1, momentum=0.9)
  late = msam_jax.msam(0.1, momentum=0.9, rho=rho) if family == "msam" else msam_jax.sam(base(), rho=rho)
  trajectories = []
  for tx in (base(), late):
    params, path = {"w": jnp.array([0.5, -0.2, 0.1])}, []
    state = tx.init(params)
    for _ in range(4 * spe):
      grads = jax.grad(lambda p: losses(p).mean())(params)
      updates, state = tx.update(grads, state, params, loss_fn=losses)
      params = optax.apply_updates(params, updates)
      path.append(msam_jax.eval_params(params, state)["w"])
    trajectories.append(np.asarray(path))
  plain, late_path = trajectories
  np.testing.assert_allclose(late_path[: jump * spe], plain[: jump * spe], rtol=1e-14)
  assert not np.allclose(late_path[jump * spe :], plain[jump * spe :], rtol=1e-3)


@pytest.mark.parametrize(
  "make, argument",
  [
    (lambda: schedules.lr_start_ramp_cos(0.1, epochs=5, steps_per_epoch=0, ramp_epochs=1), "steps_per_epoch"),
    (lambda: schedules.lr_start_ramp_cos(-0.1, epochs=5, steps_per_epoch=3, ramp_epochs=1), "base_lr"),
    (lambda: schedules.lr_start_ramp_cos(0.1, epochs=0, steps_per_epoch=3, ramp_epochs=1), "epochs"),
    (lambda: schedules.lr_cos_warmup(0.1, epochs=5, steps_per_epoch=3, warmup_epochs=5), "warmup_epochs"),
    (lambda: schedules.rho_start_ramp(0.1, steps_per_epoch=3, ramp_epochs=-1), "ramp_epochs"),
    (lambda: schedules.rho_start_jump(-0.1, steps_per_epoch=3, jump_epochs=1), "rho"),
    (lambda: schedules.rho_start_jump(0.1, steps_per_epoch=2.5, jump_epochs=1), "steps_per_epoch"),
  ],
)
def test_bad_schedule_arguments(make, argument):
  with pytest.raises(ValueError, match=rf"^{argument} must be"):
    make()
