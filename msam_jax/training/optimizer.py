"""From config fields to one optax transformation, schedules included.

Every optimizer of `msam_jax.optim.registry` is wrapped in
`optax.inject_hyperparams` (learning rate and rho injected), so the loop can
log their current values (`msam_jax.optim.current_hyperparams`) without
knowing which optimizer it runs.
"""

import inspect

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from msam_jax.optim import registry, schedules
from msam_jax.training import loss_scale
from msam_jax.training.step_plan import StepPlan


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The original's learning-rate schedules (docs/algorithms.md) as an optax schedule."""
  if config.lr_schedule == "const":
    return config.learning_rate
  if config.lr_schedule == "start_ramp_cos":
    return schedules.lr_start_ramp_cos(
      config.learning_rate, epochs=config.num_epochs, steps_per_epoch=steps_per_epoch, ramp_epochs=config.lr_ramp_epochs
    )
  if config.lr_schedule == "cos_warmup":
    return schedules.lr_cos_warmup(
      config.learning_rate,
      epochs=config.num_epochs,
      steps_per_epoch=steps_per_epoch,
      warmup_epochs=config.lr_warmup_epochs,
    )
  raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")


def rho_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The original's rho schedules (docs/algorithms.md) as an optax schedule.

  An optimizer whose registry entry has `rho_follows_lr` (GSAM) gets instead
  `schedules.gsam_rho`: rho proportional to the learning rate, from
  `config.rho` at the peak learning rate down to `config.gsam_rho_min` where
  the schedule ends (every learning-rate schedule here decays to 0; a constant
  learning rate keeps rho at `config.rho`).
  """
  if registry.get(config.optimizer).rho_follows_lr:
    lr_min = config.learning_rate if config.lr_schedule == "const" else 0.0
    return schedules.gsam_rho(
      learning_rate_schedule(config, steps_per_epoch),
      lr_max=config.learning_rate,
      lr_min=lr_min,
      rho_max=config.rho,
      rho_min=config.gsam_rho_min,
    )
  if config.rho_schedule == "const":
    return config.rho
  if config.rho_schedule == "start_ramp":
    return schedules.rho_start_ramp(config.rho, steps_per_epoch=steps_per_epoch, ramp_epochs=config.rho_ramp_epochs)
  if config.rho_schedule == "start_jump":
    return schedules.rho_start_jump(config.rho, steps_per_epoch=steps_per_epoch, jump_epochs=config.rho_jump_epochs)
  raise ValueError(f"unknown rho_schedule {config.rho_schedule!r}")


def second_gradient_steps(config: ml_collections.ConfigDict, steps_per_epoch: int, num_steps: int):
  """Which of the run's updates (by 0-based count) take the SAM family's second gradient; None outside it.

  Decided on the host from the config alone (`registry.second_gradient_steps`:
  rho above 0, LookSAM's every k-th, RST's draws), with the rho schedule
  evaluated once for all counts; the training step is then told each update's
  answer (``second_gradient=``), so none is a device-side conditional.
  """
  entry = registry.get(config.optimizer)
  if entry.family != "sam":
    return None
  counts = np.arange(num_steps, dtype=np.int32)
  rho = rho_schedule(config, steps_per_epoch)
  rho_values = np.asarray(rho(jnp.asarray(counts))) if callable(rho) else rho
  hyperparams = {**registry.options(config.optimizer), **registry.static_hyperparams(entry, config)}
  return registry.second_gradient_steps(config.optimizer, counts, rho_values, hyperparams)


def _with_clipping(config, tx):
  """The original clips the gradient the base optimizer steps with."""
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def _inject(factory, injected: dict, **static):
  """`optax.inject_hyperparams` with only `injected` (learning rate, rho) as state.

  Those are what schedules change and what the loop logs. Everything else stays
  a Python constant, so the update compiles exactly as the plain optimizer's (no
  float32 rounding of b2 in Adam's bias correction; a constant momentum lets
  MSAM rebuild its old momentum instead of copying the donated buffer).
  """
  # Every other parameter static, also those bound in a functools.partial (ASAM's
  # mask): inject_hyperparams would call a callable one as a schedule of the step.
  static_args = tuple(p for p in inspect.signature(factory).parameters if p not in injected)
  return optax.inject_hyperparams(factory, static_args=static_args)(**injected, **static)


def build_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, plan: StepPlan | None = None):
  """The optimizer named by `config.optimizer`, as the original builds it and the run steps with it.

  From its `msam_jax.optim.registry` entry: the learning rate and rho (as the
  family takes them) injected and scheduled, the other hyper-parameters
  constants from the config fields the entry names. Gradient clipping goes
  before the optimizer that steps with the gradient: around the base and MSAM
  families, inside the SAM family (around the base it wraps). `plan` (by
  default `StepPlan.of(config)`) adds per-device m-sharpness and the float16
  loss scale.
  """
  plan = StepPlan.of(config) if plan is None else plan
  entry = registry.get(config.optimizer)
  scheduled = {
    "learning_rate": learning_rate_schedule(config, steps_per_epoch),
    "rho": rho_schedule(config, steps_per_epoch),
  }
  tx = _build(entry, config, scheduled, plan.optimizer_options)
  return loss_scale.dynamic_loss_scale(tx) if plan.loss_scale else tx


def _build(entry: registry.Entry, config, scheduled: dict, group_options: dict):
  injected = {name: scheduled[name] for name in entry.injected}
  static = registry.static_hyperparams(entry, config)
  if entry.family == "sam":
    base = _build(registry.get(entry.base), config, scheduled, {})
    return _inject(entry.factory, injected, base=base, **static, **group_options)
  return _with_clipping(config, _inject(entry.factory, injected, **static))
