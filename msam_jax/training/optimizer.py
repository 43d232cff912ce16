"""From config fields to one optax transformation, schedules included.

Every optimizer is wrapped in `optax.inject_hyperparams` (learning rate and rho
injected), so the loop can log their current values
(`msam_jax.optim.current_hyperparams`) without knowing which optimizer it runs.
"""
import ml_collections
import optax

import msam_jax
from msam_jax.optim import schedules


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The original's learning-rate schedules (ALGORITHMS.md) as an optax schedule."""
  if config.lr_schedule == "const":
    return config.learning_rate
  if config.lr_schedule == "start_ramp_cos":
    return schedules.lr_start_ramp_cos(
        config.learning_rate, epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
        ramp_epochs=config.lr_ramp_epochs)
  if config.lr_schedule == "cos_warmup":
    return schedules.lr_cos_warmup(
        config.learning_rate, epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=config.lr_warmup_epochs)
  raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")


def rho_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The original's rho schedules (ALGORITHMS.md) as an optax schedule."""
  if config.rho_schedule == "const":
    return config.rho
  if config.rho_schedule == "start_ramp":
    return schedules.rho_start_ramp(
        config.rho, steps_per_epoch=steps_per_epoch, ramp_epochs=config.rho_ramp_epochs)
  if config.rho_schedule == "start_jump":
    return schedules.rho_start_jump(
        config.rho, steps_per_epoch=steps_per_epoch, jump_epochs=config.rho_jump_epochs)
  raise ValueError(f"unknown rho_schedule {config.rho_schedule!r}")


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
  return optax.inject_hyperparams(factory, static_args=tuple(static))(**injected, **static)


def build_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The optimizer named by `config.optimizer`, as the original builds it."""
  lr = learning_rate_schedule(config, steps_per_epoch)
  rho = rho_schedule(config, steps_per_epoch)
  sgd_kwargs = dict(momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov)
  adam_kwargs = dict(b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay)
  sgd = lambda: _inject(msam_jax.sgd, {"learning_rate": lr}, **sgd_kwargs)
  adamw = lambda: _inject(msam_jax.adamw, {"learning_rate": lr}, **adam_kwargs)

  name = config.optimizer
  if name == "sgd":
    return _with_clipping(config, sgd())
  if name == "adamw":
    return _with_clipping(config, adamw())
  if name == "msam":
    sgd_kwargs.pop("nesterov")
    return _with_clipping(config, _inject(msam_jax.msam, {"learning_rate": lr, "rho": rho}, **sgd_kwargs))
  if name == "adamw_msam":
    return _with_clipping(config, _inject(msam_jax.adamw_msam, {"learning_rate": lr, "rho": rho}, **adam_kwargs))
  if name in ("sam", "adamw_sam"):
    base = _with_clipping(config, sgd() if name == "sam" else adamw())
    return _inject(msam_jax.sam, {"rho": rho}, base=base)
  if name == "esam":
    return _inject(msam_jax.esam, {"rho": rho}, base=_with_clipping(config, sgd()),
                   beta=config.esam_beta, gamma=config.esam_gamma, seed=config.seed)
  if name == "looksam":
    return _inject(msam_jax.looksam, {"rho": rho}, base=_with_clipping(config, sgd()),
                   k=config.looksam_k, alpha=config.looksam_alpha)
  raise ValueError(f"unknown optimizer {name!r}")
