"""Every field a training run reads, with its default.

Config files in `configs/` start from `base_config()` and only choose values, so
a field exists in every config and can be overridden from the command line
(`--config.rho=3`). `validate` checks a config before anything is compiled.
"""
import ml_collections

OPTIMIZERS = ("sgd", "msam", "sam", "esam", "looksam", "adamw", "adamw_msam", "adamw_sam")
LR_SCHEDULES = ("const", "start_ramp_cos", "cos_warmup")
RHO_SCHEDULES = ("const", "start_ramp", "start_jump")
DTYPES = ("float32", "bfloat16", "float16")  # float16 with dynamic loss scaling (loss_scale.py)


def base_config() -> ml_collections.ConfigDict:
  """The defaults: the original's `default.ini` where it has a value."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data.
  c.dataset = "cifar100"
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.image_size = ml_collections.FieldReference(None, field_type=int)
  c.batch_size = 256  # global, over all devices and processes
  c.eval_batch_size = 512
  # dataset="synthetic": generated batches, nothing on disk (msam_jax/data/synthetic.py).
  c.synthetic = ml_collections.ConfigDict(
      {"image_shape": (32, 32, 3), "num_classes": 10, "num_train": 50_000, "num_test": 1_000})

  # Model: `msam_jax.models.build(model, num_classes, **model_kwargs)`.
  c.model = "wrn"
  c.model_kwargs = ml_collections.ConfigDict({"depth": 16, "width": 4})
  c.dtype = "float32"  # computation dtype; parameters stay float32

  # Optimizer.
  c.optimizer = "sgd"
  c.learning_rate = 0.5
  c.lr_schedule = "start_ramp_cos"
  c.lr_ramp_epochs = 1.0  # start_ramp_cos
  c.lr_warmup_epochs = 8.0  # cos_warmup
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 5e-4
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.grad_clip_norm = 0.0  # 0: no clipping
  c.rho = 3.0
  c.rho_schedule = "const"
  c.rho_ramp_epochs = 8.0  # start_ramp
  c.rho_jump_epochs = 8.0  # start_jump
  c.esam_beta = 0.5
  c.esam_gamma = 0.5
  c.looksam_k = 5  # the original's constructor defaults, which its runs used
  c.looksam_alpha = 0.2
  c.label_smoothing = 0.1

  # Schedule of the run.
  c.num_epochs = 200
  c.num_train_steps = -1  # > 0 overrides num_epochs (for quick runs and tests)
  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 1000  # plus one at the end; 0: only at the end
  c.max_checkpoints_to_keep = 3
  c.async_checkpointing = True  # False: write each checkpoint before training goes on
  # Batch-norm statistics recomputed at the unperturbed parameters after an MSAM-family
  # run: number of training batches, -1 = one epoch (as the original), 0 = off.
  c.bn_recompute_batches = -1

  # Sharpness probes at the unperturbed parameters on a fixed training batch.
  c.sharpness_every_steps = 0  # 0: off
  c.sharpness_rho = 0.05
  c.sharpness_num_iters = 20
  return c


class ConfigError(ValueError):
  """A config field has a value the run cannot use."""


def _choice(config, field, choices):
  value = config[field]
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r} is not valid; choose one of {', '.join(choices)}.")


def _at_least(config, field, low, strict=False):
  value = config[field]
  if value < low or (strict and value == low):
    relation = ">" if strict else ">="
    raise ConfigError(f"config.{field}={value!r} must be {relation} {low}.")


def validate(config: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1) -> None:
  """Raises `ConfigError` naming the first bad field; cheap, compiles nothing."""
  from msam_jax import data, models  # deferred: heavy imports

  _choice(config, "optimizer", OPTIMIZERS)
  _choice(config, "model", models.MODELS)
  _choice(config, "dataset", data.DATASETS)
  if config.dataset == "synthetic":
    try:
      data.synthetic.Spec(**config.synthetic)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.synthetic: {e}") from None
  _choice(config, "lr_schedule", LR_SCHEDULES)
  _choice(config, "rho_schedule", RHO_SCHEDULES)
  _choice(config, "dtype", DTYPES)
  _at_least(config, "learning_rate", 0.0, strict=True)
  _at_least(config, "rho", 0.0)
  _at_least(config, "weight_decay", 0.0)
  _at_least(config, "grad_clip_norm", 0.0)
  _at_least(config, "label_smoothing", 0.0)
  if not 0.0 <= config.momentum < 1.0:
    raise ConfigError(f"config.momentum={config.momentum!r} must be in [0, 1).")
  if not 0.0 < config.esam_gamma <= 1.0:
    raise ConfigError(f"config.esam_gamma={config.esam_gamma!r} must be in (0, 1].")
  if not 0.0 < config.esam_beta <= 1.0:
    raise ConfigError(f"config.esam_beta={config.esam_beta!r} must be in (0, 1].")
  _at_least(config, "looksam_k", 1)
  for field in ("batch_size", "eval_batch_size"):
    _at_least(config, field, 1)
    if config[field] % num_devices or config[field] % process_count:
      raise ConfigError(
          f"config.{field}={config[field]} is not divisible by the {num_devices} devices"
          f" ({process_count} processes); choose a multiple of {num_devices}.")
  if config.num_train_steps <= 0:
    _at_least(config, "num_epochs", 1)
