"""The learning-rate and rho schedules of the original configs, as optax schedules.

The original steps its epoch-based schedulers before every update: update
number `count` (0-based, the count optax passes to a schedule) runs at
progress ``x = (count + 1) / steps_per_epoch`` epochs. Each schedule here is
that formula (docs/algorithms.md), assembled from optax's schedule pieces evaluated
at ``count + 1`` steps. A constant is a plain float.
"""

import math

import jax.numpy as jnp
import optax

from msam_jax import validation


def _check_timing(steps_per_epoch, **epochs) -> None:
  validation.integer("steps_per_epoch", steps_per_epoch, static=False)
  for name, value in epochs.items():
    validation.non_negative(name, value)


def _at_next_step(schedule: optax.Schedule) -> optax.Schedule:
  """`schedule` of the progress after the update: count -> schedule(count + 1)."""
  return lambda count: schedule(count + 1)


def _ramp(ramp_steps: float) -> optax.Schedule:
  """min(1, s / ramp_steps) of the step s (1 throughout when ramp_steps is 0)."""
  if ramp_steps == 0:
    return optax.constant_schedule(1.0)
  return optax.linear_schedule(0.0, 1.0, transition_steps=ramp_steps)


def lr_start_ramp_cos(base_lr: float, *, epochs: float, steps_per_epoch: int, ramp_epochs: float) -> optax.Schedule:
  """ "startRamp cos": ``base * min(1, x / ramp) * 0.5 (1 + cos(pi x / epochs))``."""
  validation.non_negative("base_lr", base_lr)
  _check_timing(steps_per_epoch, ramp_epochs=ramp_epochs)
  validation.in_interval("epochs", epochs, 0, math.inf, low_closed=False, high_closed=False)
  ramp = _ramp(ramp_epochs * steps_per_epoch)
  cosine = optax.cosine_decay_schedule(base_lr, decay_steps=epochs * steps_per_epoch)
  return _at_next_step(lambda step: ramp(step) * cosine(step))


def lr_cos_warmup(base_lr: float, *, epochs: float, steps_per_epoch: int, warmup_epochs: float) -> optax.Schedule:
  """ "cosWarmUp": ``base x / warm`` for ``x < warm``, then a half cosine to 0 at `epochs`."""
  validation.non_negative("base_lr", base_lr)
  _check_timing(steps_per_epoch)
  validation.in_interval("epochs", epochs, 0, math.inf, low_closed=False, high_closed=False)
  validation.in_interval("warmup_epochs", warmup_epochs, 0, epochs, low_closed=True, high_closed=False)
  total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
  if warmup == 0:
    return _at_next_step(optax.cosine_decay_schedule(base_lr, decay_steps=total))
  return _at_next_step(
    optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=base_lr, warmup_steps=warmup, decay_steps=total)
  )


def rho_start_ramp(rho: float, *, steps_per_epoch: int, ramp_epochs: float) -> optax.Schedule:
  """ "startRamp": ``rho * min(1, x / ramp)``."""
  validation.non_negative("rho", rho)
  _check_timing(steps_per_epoch, ramp_epochs=ramp_epochs)
  ramp = _ramp(ramp_epochs * steps_per_epoch)
  return _at_next_step(lambda step: rho * ramp(step))


def _first_count_after(epochs: float, steps_per_epoch: int) -> int:
  """The smallest update count whose progress ``(count + 1) / spe`` exceeds `epochs`.

  Found with the same float division the schedule's formula uses, so that a
  jump exactly at a step boundary falls where the formula puts it.
  """
  count = max(0, math.floor(epochs * steps_per_epoch) - 2)
  while (count + 1) / steps_per_epoch <= epochs:
    count += 1
  while count > 0 and count / steps_per_epoch > epochs:
    count -= 1
  return count


def rho_start_jump(rho: float, *, steps_per_epoch: int, jump_epochs: float) -> optax.Schedule:
  """ "startJump": ``0`` while ``x <= jump``, then `rho`.

  With the jump late in the run this is late-phase SAM (Zhou et al., "Sharpness-Aware
  Minimization Efficiently Selects Flatter Minima Late in Training", arXiv 2410.10373):
  the base optimizer until `jump_epochs`, SAM after (docs/algorithms.md, Schedules).
  """
  validation.non_negative("rho", rho)
  _check_timing(steps_per_epoch, jump_epochs=jump_epochs)
  return optax.join_schedules(
    [optax.constant_schedule(0.0), optax.constant_schedule(rho)], [_first_count_after(jump_epochs, steps_per_epoch)]
  )


def gsam_rho(
  lr_schedule: optax.ScalarOrSchedule, lr_max: float, lr_min: float, rho_max: float, rho_min: float
) -> optax.Schedule:
  """GSAM's rho, proportional to the learning rate, clamped to ``[rho_min, rho_max]``.

  ``rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)``,
  `rho_max` when ``lr_max == lr_min``, with ``lr_t = lr_schedule(count)`` the
  learning rate of the same update (pass the base optimizer's schedule).

  Deliberate differences from big_vision's `gsam_gradient`: the clamp (there
  rho goes below rho_min, even negative, whenever lr < lr_min, e.g. during a
  warm-up from 0: big_vision issue 80), and the step: big_vision's trainer
  evaluates the schedule at the 1-based step, i.e. the next update's learning
  rate; ``lambda count: lr_schedule(count + 1)`` reproduces that.
  """
  for name, value in (("lr_max", lr_max), ("lr_min", lr_min), ("rho_max", rho_max), ("rho_min", rho_min)):
    validation.non_negative(name, value)
  if rho_min > rho_max:
    raise ValueError(f"rho_min must be <= rho_max, got rho_min={rho_min!r}, rho_max={rho_max!r}")
  if lr_max < lr_min:
    raise ValueError(f"lr_max must be >= lr_min, got lr_max={lr_max!r}, lr_min={lr_min!r}")
  if lr_max == lr_min:
    return optax.constant_schedule(rho_max)

  def schedule(count):
    lr = lr_schedule(count) if callable(lr_schedule) else lr_schedule
    rho = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
    return jnp.clip(rho, rho_min, rho_max)

  return schedule
