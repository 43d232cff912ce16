"""One run's config: the config file's, with the comparison's fields and each optimizer's settings."""

from msam_jax.optim import registry

from benchmarks.compare.entries import (
  BASE_OPTIMIZER,
  LATE_SAM,
  LATE_SAM_FRACTION,
  MESA_OPTIMIZERS,
  OPTIMIZERS,
  USES_RHO,
  registry_name,
)


# Chosen for configs/digits.py by a small sweep (see benchmarks/results/compare_digits/README.md).
# MSAM's rho is a distance along the normalised momentum in parameter space (the
# digits CNN's parameter norm is about 19); SAM's is the usual gradient-ascent radius.
_FAMILY_RHO = {"msam": 0.3, "sam": 0.05}
# ASAM's rho is relative to |w| (SamsungLabs/ASAM uses 10 x SAM's: 0.5 vs 0.05 on CIFAR);
# GSAM's is its rho_max, falling with the learning rate to gsam_rho_min (DEFAULT_FIELDS).
_RHO = {"asam": 0.5, "adamw_asam": 0.5, "gsam": 0.1, "adamw_gsam": 0.1}
DEFAULT_RHO = ",".join(
  f"{name}={_RHO.get(name, _FAMILY_RHO[registry.get(registry_name(name)).family]):g}"
  for name in OPTIMIZERS
  if name in USES_RHO
)
# Other config fields per optimizer, not swept (benchmarks/results/compare_digits/README.md):
# ASAM's eta as SamsungLabs/ASAM; GSAM's rho_min / rho_max = 1/5 (the reference ViT config:
# 0.1 / 0.6) and alpha 0.3.
# Flattened config paths (optimizer options are `optimizer_kwargs.<option>`).
_GSAM_FIELDS = {"optimizer_kwargs.alpha": 0.3, "gsam_rho_min": 0.02}
DEFAULT_FIELDS = {
  "asam": {"optimizer_kwargs.eta": 0.01},
  "adamw_asam": {"optimizer_kwargs.eta": 0.01},
  "gsam": _GSAM_FIELDS,
  "adamw_gsam": _GSAM_FIELDS,
}
# MESA (docs/algorithms.md): the SAF code's lambda (--reinforce 0.3), temperature 5 and
# start epoch 6 (config defaults); its EMA decay 0.9998 per step is a time constant of
# 5000 steps, about one ImageNet epoch at batch 256, but more than a whole digits run,
# so the decay is scaled to keep a time constant of one epoch: 1 - 1 / steps_per_epoch.
MESA_FIELDS = {"mesa_weight": 0.3}
for _name in MESA_OPTIMIZERS:
  DEFAULT_FIELDS[_name] = MESA_FIELDS
# The config's learning rate and weight decay are SGD's; the AdamW family needs its own.
_ADAMW_FAMILY = [name for name in OPTIMIZERS if BASE_OPTIMIZER[name] == "adamw"]
# The centre of each non-SGD base's learning-rate sweep (the config's learning rate is SGD's).
# Lion's sign update has a larger norm than AdamW's, so its learning rate is about ten times
# smaller (Chen et al. 2023, Section 5); its weight decay is optax.lion's own (registry).
BASE_LEARNING_RATE = {"adamw": 3e-3, "lion": 3e-4}
DEFAULT_LR = ",".join(
  f"{name}={BASE_LEARNING_RATE[BASE_OPTIMIZER[name]]:g}"
  for name in OPTIMIZERS
  if BASE_OPTIMIZER[name] in BASE_LEARNING_RATE
)

# Lion's weight decay is optax.lion's own, named explicitly: the config file's optimizer (digits:
# msam, 5e-4) would otherwise hand its value of the option of the same name to Lion (set_optimizer).
_LION_FAMILY = [name for name in OPTIMIZERS if BASE_OPTIMIZER[name] == "lion"]
DEFAULT_WEIGHT_DECAY = ",".join(
  [f"{name}=0.05" for name in _ADAMW_FAMILY]
  + [f"{name}={registry.options('lion')['weight_decay']:g}" for name in _LION_FAMILY]
)

# The training loop's config field that keeps the best-on-validation model (issue 28).
BEST_MODEL_FIELD = "best_model_metric"


def steps_per_epoch(config) -> int:
  from msam_jax import data

  info = data.dataset_info(
    config.dataset, image_size=config.image_size, validation_fraction=config.get("validation_fraction", 0.0)
  )
  return data.steps_per_epoch(info, config.batch_size)


def run_config(
  get_config,
  optimizer: str,
  seed: int,
  *,
  epochs=None,
  steps=None,
  rho=None,
  learning_rate=None,
  weight_decay=None,
  sharpness=True,
  label_noise=0.0,
  label_noise_seed=0,
  validation_fraction=0.0,
  eval_every_epochs=1,
):
  """One run's config: the file's, with the comparison's fields and overrides set."""
  from msam_jax.training import set_optimizer  # config helpers only: no jax backend

  config = get_config()
  set_optimizer(config, registry_name(optimizer))  # the options it shares with the file's optimizer keep their values
  config.seed = seed
  config.label_noise = label_noise
  config.label_noise_seed = label_noise_seed
  config.validation_fraction = validation_fraction
  config.eval_train_split = True  # memorisation at every noise level, 0 included
  config.update_from_flattened_dict(DEFAULT_FIELDS.get(optimizer, {}))
  if optimizer in MESA_OPTIMIZERS:
    config.mesa_decay = 1.0 - 1.0 / steps_per_epoch(config)  # the EMA's time constant: one epoch
  if epochs is not None:
    config.num_epochs = epochs
  if steps is not None:
    config.num_train_steps = steps
  if optimizer == LATE_SAM:  # rho 0, then rho from LATE_SAM_FRACTION of the run's length
    length = config.num_train_steps / steps_per_epoch(config) if config.num_train_steps > 0 else config.num_epochs
    config.rho_schedule = "start_jump"
    config.rho_jump_epochs = LATE_SAM_FRACTION * length
  if BEST_MODEL_FIELD in config:
    config[BEST_MODEL_FIELD] = "validation_accuracy"  # ties: the lower validation loss (the loop's rule)
  if rho is not None:
    config.rho = rho
    if registry.get(config.optimizer).rho_follows_lr and "gsam_rho_min" in DEFAULT_FIELDS.get(optimizer, {}):
      # GSAM's rho_min keeps its ratio to rho_max (1/5), so any swept rho_max is valid.
      config.gsam_rho_min = rho * DEFAULT_FIELDS[optimizer]["gsam_rho_min"] / _RHO[optimizer]
  if learning_rate is not None:
    config.learning_rate = learning_rate
  if weight_decay is not None:
    config.optimizer_kwargs.weight_decay = weight_decay
  config.eval_every_epochs = eval_every_epochs
  # Train metrics averaged over each epoch, so `final_train_loss` is the last epoch's mean.
  config.log_every_steps = steps_per_epoch(config)
  # Only the measurement at the end; off (0) skips the probes, whose compilation dominates short runs.
  config.sharpness_every_steps = 2**31 - 1 if sharpness else 0
  config.checkpoint_every_steps = 0  # only the final checkpoint, into a throw-away workdir
  return config


def check_best_model(config) -> None:
  """ValueError unless the training loop keeps the best-on-validation model (the early-stopped column)."""
  if BEST_MODEL_FIELD not in config:
    raise ValueError(
      f"this checkout's training loop has no config.{BEST_MODEL_FIELD} (the best-on-validation model of"
      " issue 28), which the early-stopped column reads; update msam_jax (check PYTHONPATH) or run an older"
      " version of this script."
    )
