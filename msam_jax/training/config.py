"""Every field a training run reads, with its default.

Config files in `configs/` start from `base_config()` and only choose values, so
a field exists in every config and can be overridden from the command line
(`--config.rho=3`). `set_model` fills `model_kwargs` with every option of the
model and its default, so any option can be set from the command line
(`--config.model_kwargs.depth=28`). `set_optimizer` does the same for the
optimizer: `optimizer_kwargs` holds every option of its factory
(`msam_jax.optim.registry.options`), e.g. `--config.optimizer_kwargs.momentum=0.8`;
the scheduled hyper-parameters (`learning_rate`, `rho`) and their schedules
stay top-level fields. `validate_fields` checks a config without
TensorFlow or devices; `validate` adds the device and dataset checks. Neither
compiles anything.
"""

import math
import os
import types
import typing

import ml_collections

from msam_jax.optim import registry

OPTIMIZERS = registry.names()  # one entry per optimizer in msam_jax/optim/registry.py
LR_SCHEDULES = ("const", "start_ramp_cos", "cos_warmup")
RHO_SCHEDULES = ("const", "start_ramp", "start_jump")
DTYPES = ("float32", "bfloat16", "float16")  # float16 with dynamic loss scaling (loss_scale.py)
BEST_MODEL_METRICS = ("validation_accuracy", "validation_loss")  # the first is the default


def base_config() -> ml_collections.ConfigDict:
  """The defaults: the original's `default.ini` where it has a value."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameters, data order, augmentation, dropout

  # Data.
  c.dataset = "cifar100"  # a name of msam_jax.data.DATASETS: digits, cifar10, cifar100, imagenet2012, synthetic
  c.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data directory; None: TFDS's default
  c.image_size = ml_collections.FieldReference(None, field_type=int)  # ImageNet / ViT input size; None: the model's
  c.batch_size = 256  # global, over all devices and processes
  c.eval_batch_size = 512  # global; the last batch is padded and masked
  # Symmetric label noise (msam_jax/data/label_noise.py): this fraction of the TRAINING labels,
  # in [0, 1), replaced by a uniformly drawn other class; which examples and into which class
  # is fixed per example by label_noise_seed (not by `seed`: every seed and optimizer sees the
  # same corrupted set). Evaluation labels stay clean.
  c.label_noise = 0.0
  c.label_noise_seed = 0  # which examples are corrupted, and into which class
  # A fixed, stratified subset of the training split, in [0, 1), held out with clean labels and
  # evaluated beside the test split (msam_jax/data/validation_split.py); digits, CIFAR, synthetic.
  c.validation_fraction = 0.0
  # Also evaluate the training split as trained (noisy labels, no augmentation): the accuracy
  # there is memorisation. Always on when label_noise > 0 (digits and CIFAR only).
  c.eval_train_split = False
  # dataset="synthetic": generated batches, nothing on disk (msam_jax/data/synthetic.py).
  # image_shape None: (image_size, image_size, 3) where image_size is set, else (32, 32, 3).
  c.synthetic = ml_collections.ConfigDict(
    {
      "image_shape": ml_collections.FieldReference(None, field_type=tuple),
      "num_classes": 10,
      "num_train": 50_000,
      "num_test": 1_000,
    }
  )

  # Model: `msam_jax.models.build(model, num_classes, **model_kwargs)`.
  c.model = "wrn"  # a name of msam_jax.models.MODELS
  c.model_kwargs = ml_collections.ConfigDict()  # every option of the model (set_model), e.g. depth, width
  c.dtype = "float32"  # computation dtype; parameters stay float32

  # Optimizer: `msam_jax.optim.registry` entry `optimizer`, with its options
  # (momentum, weight decay, ESAM's beta, ...) in `optimizer_kwargs` (set_optimizer).
  c.optimizer = "sgd"
  c.optimizer_kwargs = ml_collections.ConfigDict()  # every option of the optimizer (set_optimizer), e.g. momentum
  c.learning_rate = 0.5
  c.lr_schedule = "start_ramp_cos"
  c.lr_ramp_epochs = 1.0  # start_ramp_cos
  c.lr_warmup_epochs = 8.0  # cos_warmup
  c.grad_clip_norm = 0.0  # 0: no clipping
  c.rho = 3.0  # the ascent radius; with a base optimizer, its Momentum-SAM's (set_optimizer, rho_scale)
  c.rho_schedule = "const"
  c.rho_ramp_epochs = 8.0  # start_ramp
  # start_jump: rho 0 up to this epoch (may be fractional), then rho. Late in the run it is
  # late-phase SAM (Zhou et al. 2024, arXiv 2410.10373), e.g. 0.8 * num_epochs: SAM for the
  # last 20 %; train.py runs the SAM family's rho-0 steps with one gradient.
  c.rho_jump_epochs = 8.0
  c.gsam_rho_min = 0.0  # GSAM's rho schedule: falls from rho (= rho_max) with the learning rate
  # m-sharpness for sam, asam and gsam (and their adamw_ twins): one perturbation per group
  # of this many examples of each device's batch (a divisor of it); 0 = one perturbation
  # from the whole global batch.
  c.sam_group_size = 0
  c.label_smoothing = 0.1  # of the cross-entropy loss, in [0, 1)
  # MESA (msam_jax/training/mesa.py, docs/algorithms.md): loss + mesa_weight * T^2 * KL(EMA model || model)
  # with any optimizer; the defaults are those of the SAF paper's code, whose runs use weight 0.3 or 0.8.
  c.mesa_weight = 0.0  # lambda; 0 = off
  c.mesa_decay = 0.9998  # the EMA's decay per step
  c.mesa_start_epoch = 6.0  # epochs without the term (the SAF code's kl_start_epoch 5: on while epoch > 5)
  c.mesa_temperature = 5.0  # T of the softened outputs in the KL term

  # Schedule of the run.
  c.num_epochs = 200  # the length of the run and of its schedules
  c.num_train_steps = -1  # > 0 overrides num_epochs (for quick runs and tests)
  c.log_every_steps = 50  # training metrics to TensorBoard and the log
  c.eval_every_epochs = 1  # evaluation on the whole test split at eval_params
  # With a validation split: after each evaluation keep the model best on this validation
  # metric in workdir/best_model/ ("validation_accuracy", ties to the lower validation loss;
  # or "validation_loss", lower is better); "" keeps none. Never chosen on the test split.
  c.best_model_metric = "validation_accuracy"
  c.checkpoint_every_steps = 1000  # plus one at the end; 0: only at the end
  c.max_checkpoints_to_keep = 3  # older checkpoints are deleted
  c.async_checkpointing = True  # False: write each checkpoint before training goes on
  # Batch-norm statistics recomputed at the unperturbed parameters after an MSAM-family
  # run: number of training batches, -1 = one epoch (as the original), 0 = off.
  c.bn_recompute_batches = -1

  # Sharpness probes at the unperturbed parameters on a fixed training batch.
  c.sharpness_every_steps = 0  # 0: off
  c.sharpness_rho = 0.05  # radius of the SAM sharpness L(p + rho g/|g|) - L(p)
  c.sharpness_num_iters = 20  # power iterations of the Hessian max eigenvalue

  # Pod scale (mesh.py, accumulation.py, preemption.py).
  c.sharding = "replicate"  # or "fsdp": parameters and optimizer state split over devices
  c.fsdp_min_bytes = 1 << 20  # fsdp: smaller leaves stay replicated
  c.grad_accum_steps = 1  # the global batch in this many micro-batches per step
  c.checkpoint_on_preemption = True  # SIGTERM: finish the step, checkpoint, exit with status 75
  set_model(c, "wrn", depth=16, width=4)
  set_optimizer(c, "sgd", weight_decay=5e-4)  # the factories' defaults otherwise (momentum 0.9, ...)
  return c


# Per-optimizer fields that moved into `optimizer_kwargs`: old spelling -> new.
RENAMED_FIELDS = {
  **{f: f"optimizer_kwargs.{f}" for f in ("momentum", "nesterov", "weight_decay", "b1", "b2", "eps")},
  "esam_beta": "optimizer_kwargs.beta",
  "esam_gamma": "optimizer_kwargs.gamma",
  "looksam_k": "optimizer_kwargs.k",
  "looksam_alpha": "optimizer_kwargs.alpha",
  "asam_eta": "optimizer_kwargs.eta",
  "gsam_alpha": "optimizer_kwargs.alpha",
}


# Fields that may differ when a run resumes (docs/resuming.md): how often it logs, evaluates,
# probes and checkpoints, where the data lives, and where it stops
# (`num_train_steps` only cuts the run short or lets it go on; the schedules
# depend on `num_epochs`, so that one may not change), and how the work is laid
# out on the hardware (a preempted pod slice may come back with another shape:
# checkpoints restore into any sharding and device count).
RESUMABLE_FIELDS = (
  "data_dir",
  "num_train_steps",
  "log_every_steps",
  "eval_every_epochs",
  "checkpoint_every_steps",
  "max_checkpoints_to_keep",
  "async_checkpointing",
  "sharpness_every_steps",
  "sharding",
  "fsdp_min_bytes",
  "grad_accum_steps",
  "checkpoint_on_preemption",
)


class ConfigError(ValueError):
  """A config field has a value the run cannot use."""


def model_options(name: str) -> dict:
  """The options of model `name` that `model_kwargs` holds (`dtype` is `config.dtype`)."""
  from msam_jax import models

  if name not in models.MODELS:
    raise ConfigError(f"config.model={name!r} is not valid; choose one of {', '.join(models.MODELS)}.")
  return {k: v for k, v in models.options(name).items() if k != "dtype"}


def _field_type(name: str, option: str):
  """The non-None type of an option whose default is None (`depth: int | None = None`)."""
  from msam_jax import models

  annotation = models.option_types(name)[option]
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    others = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(others) == 1:
      return others[0]
  return object


def set_model(config: ml_collections.ConfigDict, name: str, **kwargs) -> None:
  """Chooses model `name`: `model_kwargs` = all its options, defaults updated by `kwargs`.

  A model's `image_size` option is `config.image_size` itself (one
  FieldReference), so `--config.image_size=160` resizes data and model together.
  """
  options = model_options(name)
  unknown = sorted(set(kwargs) - set(options))
  if unknown:
    raise ConfigError(
      f"config.model_kwargs.{unknown[0]} is not an option of model {name!r}; its options are {', '.join(options)}."
    )
  if "image_size" in options:
    size = kwargs.pop("image_size", None)
    if size is not None and config.image_size is not None and size != config.image_size:
      raise ConfigError(
        f"config.model_kwargs.image_size={size!r} differs from config.image_size="
        f"{config.image_size!r}; set only config.image_size."
      )
    if config.image_size is None:
      config.image_size = options["image_size"] if size is None else size
  was_locked = config.is_locked
  config.unlock()
  config.model = name
  model_kwargs = ml_collections.ConfigDict()
  for option, default in options.items():
    if option == "image_size":
      model_kwargs[option] = config.get_ref("image_size")
      continue
    value = kwargs.get(option, default)
    if value is None:  # typed, so the command line can set it
      value = ml_collections.FieldReference(None, field_type=_field_type(name, option))
    model_kwargs[option] = value
  config.model_kwargs = model_kwargs
  if was_locked:
    config.lock()


def load_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file such as `configs/digits.py` (what `--config` loads)."""
  import importlib.util

  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def optimizer_options(name: str) -> dict:
  """The options of optimizer `name` that `optimizer_kwargs` holds, with their defaults."""
  if name not in registry.names():
    raise ConfigError(f"config.optimizer={name!r} is not valid; choose one of {', '.join(registry.names())}.")
  return registry.options(name)


def rho_scale(name: str) -> float | None:
  """The default rho of optimizer `name` (`~msam_jax.optim.registry.Entry.default_rho`); for a base optimizer, its
  Momentum-SAM's.

  Which scale a config's one `rho` is on: MSAM's rho is a distance along the
  momentum, 6-30x SAM's along the gradient (defaults 0.3 and 0.05). A config
  that names a base optimizer (sgd, adamw, lion) holds the rho its Momentum-SAM
  takes, as the original's config files do (configs/imagenet_vit.py: adamw, rho 10).
  None for a base optimizer without a Momentum-SAM in the registry.
  """
  entry = registry.get(name)
  if entry.family != "base":
    return entry.default_rho
  twins = [e.default_rho for e in registry.REGISTRY.values() if e.family == "msam" and e.base == name]
  return twins[0] if twins else None


def set_optimizer(config: ml_collections.ConfigDict, name: str, *, rho: float | None = None, **kwargs) -> None:
  """Chooses optimizer `name`: `optimizer_kwargs` = all its options, and ``config.rho`` on its scale.

  Values come from `kwargs`, else from the current `optimizer_kwargs` where the
  new optimizer has the same option (switching sgd -> msam keeps the momentum
  and weight decay a config file chose), else the factory's default.

  ``config.rho`` becomes ``rho`` when given. Otherwise a switch to an optimizer whose
  rho is on another scale (``rho_scale`` in this module: msam -> sam, sam -> asam) sets the new
  one's default (sam: 0.05, never MSAM's 0.3 or 3), and a switch on the same
  scale (sgd -> msam, msam -> adamw_msam, sam -> gsam) keeps it: a config file
  sets its rho after calling this. The command line does the same
  (``--config.optimizer=sam`` without ``--config.rho`` trains at sam's default).
  """
  options = optimizer_options(name)
  unknown = [k for k in kwargs if k not in options]
  if unknown:
    raise ConfigError(
      f"config.optimizer_kwargs.{unknown[0]} is not an option of optimizer {name!r}; "
      f"its options are {', '.join(options)}."
    )
  current = config.get("optimizer_kwargs") or {}
  previous = config.get("optimizer")
  was_locked = config.is_locked
  config.unlock()
  if rho is not None:
    config.rho = rho
  elif previous != name and rho_scale(name) is not None:
    if previous not in registry.REGISTRY or rho_scale(previous) != rho_scale(name):
      config.rho = rho_scale(name)
  config.optimizer = name
  config.optimizer_kwargs = ml_collections.ConfigDict(
    {option: kwargs.get(option, current.get(option, default)) for option, default in options.items()}
  )
  if was_locked:
    config.lock()


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose `model_kwargs` and `optimizer_kwargs` hold every option.

  Keeps the options they set. Options of another optimizer (left from before
  `config.optimizer` was changed, as flat fields were) are dropped; a name that
  is no option of the model or of any optimizer raises ConfigError.
  """
  resolved = ml_collections.ConfigDict(config.to_dict())
  given = dict(resolved.model_kwargs) if resolved.model_kwargs is not None else {}
  set_model(resolved, resolved.model, **given)
  set_optimizer(resolved, resolved.optimizer, **_optimizer_kwargs(resolved))
  if resolved.dataset == "synthetic" and resolved.synthetic.image_shape is None:
    resolved.synthetic.image_shape = _synthetic_image_shape(resolved)  # recorded as it runs
  return resolved


def _optimizer_kwargs(config) -> dict:
  """`config.optimizer_kwargs` without other optimizers' options; ConfigError for a name no optimizer has."""
  options = optimizer_options(config.optimizer)
  given = dict(config.optimizer_kwargs) if config.get("optimizer_kwargs") is not None else {}
  known = {option for name in registry.names() for option in registry.options(name)}
  unknown = sorted(set(given) - known)
  if unknown:
    raise ConfigError(
      f"config.optimizer_kwargs.{unknown[0]} is not an option of optimizer {config.optimizer!r}; "
      f"its options are {', '.join(options)}."
    )
  return {k: v for k, v in given.items() if k in options}


def _fail(field: str, value, requirement: str):
  raise ConfigError(f"config.{field}={value!r} {requirement}; set --config.{field} to a valid value.")


def _check_types(config) -> None:
  """Every field exists in `base_config()` and holds the type of its default (floats finite)."""
  defaults = base_config()
  unknown = sorted(set(config) - set(defaults))
  renamed = [f for f in unknown if f in RENAMED_FIELDS]
  if renamed:
    new = RENAMED_FIELDS[renamed[0]]
    raise ConfigError(f"config.{renamed[0]} is now config.{new}; set --config.{new} instead.")
  if unknown:
    raise ConfigError(
      f"config.{unknown[0]} is not a config field; the fields are those of "
      "msam_jax.training.base_config() (see msam_jax/training/config.py)."
    )
  for field in defaults:
    if field in ("model_kwargs", "optimizer_kwargs"):
      continue
    value, default = config[field], defaults[field]
    if field in ("data_dir", "image_size"):
      kind = str if field == "data_dir" else int
      if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        _fail(field, value, f"must be {'a path' if kind is str else 'an integer'} or None")
    elif isinstance(default, bool):
      if not isinstance(value, bool):
        _fail(field, value, "must be True or False")
    elif isinstance(default, int):
      if not isinstance(value, int) or isinstance(value, bool):
        _fail(field, value, "must be an integer")
    elif isinstance(default, float):
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(field, value, "must be a finite number")
    elif isinstance(default, str) and not isinstance(value, str):
      _fail(field, value, "must be a string")


def _choice(config, field, choices):
  value = config[field]
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r} is not valid; choose one of {', '.join(choices)}.")


def _at_least(config, field, low, strict=False):
  value = config[field]
  if value < low or (strict and value == low):
    relation = ">" if strict else ">="
    raise ConfigError(f"config.{field}={value!r} must be {relation} {low}.")


def _in_unit(config, field, *, low_open=False, high_open=True):
  value = config[field]
  if (value < 0 or (low_open and value == 0)) or (value > 1 or (high_open and value == 1)):
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    raise ConfigError(f"config.{field}={value!r} must be in {interval}.")


def validate_fields(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first bad field; imports no TensorFlow, touches no device."""
  _check_types(config)
  _choice(config, "optimizer", registry.names())
  _choice(config, "lr_schedule", LR_SCHEDULES)
  _choice(config, "rho_schedule", RHO_SCHEDULES)
  _choice(config, "dtype", DTYPES)
  model_kwargs = config.model_kwargs if config.model_kwargs is not None else {}
  _check_kwargs("model", config.model, model_kwargs, model_options(config.model))
  from msam_jax import models

  try:  # the builders check their options' values (e.g. a WRN's depth is 6n+4); nothing is initialised
    models.build(config.model, 2, dtype=config.dtype, **{k: v for k, v in model_kwargs.items() if v is not None})
  except (ValueError, TypeError) as e:
    raise ConfigError(
      f"config.model_kwargs of model {config.model!r}: {e}; set valid --config.model_kwargs.* values."
    ) from None
  _validate_optimizer_kwargs(config)
  _at_least(config, "learning_rate", 0.0, strict=True)
  for field in (
    "rho",
    "grad_clip_norm",
    "lr_ramp_epochs",
    "lr_warmup_epochs",
    "rho_ramp_epochs",
    "rho_jump_epochs",
    "checkpoint_every_steps",
    "sharpness_every_steps",
  ):
    _at_least(config, field, 0)
  _in_unit(config, "label_smoothing")
  _in_unit(config, "label_noise")
  _in_unit(config, "validation_fraction")
  _at_least(config, "label_noise_seed", 0)
  if config.label_noise_seed >= 2**63:
    raise ConfigError(f"config.label_noise_seed={config.label_noise_seed!r} must be < 2**63.")
  _at_least(config, "gsam_rho_min", 0.0)
  _at_least(config, "sam_group_size", 0)
  _at_least(config, "mesa_weight", 0.0)
  _in_unit(config, "mesa_decay")
  _at_least(config, "mesa_start_epoch", 0.0)
  _at_least(config, "mesa_temperature", 0.0, strict=True)
  _validate_variants(config)
  _at_least(config, "sharpness_rho", 0.0, strict=True)
  for field in (
    "log_every_steps",
    "eval_every_epochs",
    "max_checkpoints_to_keep",
    "sharpness_num_iters",
    "batch_size",
    "eval_batch_size",
  ):
    _at_least(config, field, 1)
  _at_least(config, "bn_recompute_batches", -1)
  _validate_best_model_metric(config)
  if config.image_size is not None:
    _at_least(config, "image_size", 1)
  if config.num_train_steps <= 0:
    _at_least(config, "num_epochs", 1)


def _validate_best_model_metric(config: ml_collections.ConfigDict) -> None:
  """A validation metric (never the test split's), and a validation split unless it is the default."""
  metric = config.best_model_metric
  if metric and metric not in BEST_MODEL_METRICS:
    split = "the test split" if metric in ("accuracy", "loss", "accuracy_top5") else "no validation metric"
    raise ConfigError(
      f"config.best_model_metric={metric!r} names {split}; the best model is chosen on validation: set"
      f" --config.best_model_metric to {' or '.join(BEST_MODEL_METRICS)} (or '' for none)."
    )
  if metric and metric != BEST_MODEL_METRICS[0] and not config.validation_fraction:
    raise ConfigError(
      f"config.best_model_metric={metric!r} needs a validation split; set --config.validation_fraction"
      " (e.g. 0.1) or --config.best_model_metric=''."
    )


def best_model_metric(config: ml_collections.ConfigDict) -> str:
  """The metric the run keeps its best model on; "" when none is kept (off, or no validation split)."""
  return config.best_model_metric if config.validation_fraction > 0 else ""


def _check_kwargs(kind: str, name: str, kwargs, options: dict) -> None:
  """`config.<kind>_kwargs`: only options of `name`, each finite and of its default's type."""
  unknown = sorted(set(kwargs) - set(options))
  if unknown:
    raise ConfigError(
      f"config.{kind}_kwargs.{unknown[0]} is not an option of {kind} {name!r}; its options are {', '.join(options)}."
    )
  for option, value in kwargs.items():
    default = options[option]
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config.{kind}_kwargs.{option}={value!r} must be a finite number.")
    if (
      default is not None
      and value is not None
      and type(value) is not type(default)
      and not (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool))
    ):
      raise ConfigError(
        f"config.{kind}_kwargs.{option}={value!r} must be a {type(default).__name__} like its default {default!r}."
      )


def _validate_optimizer_kwargs(config: ml_collections.ConfigDict) -> None:
  """The options exist (`registry.options`) and the factory accepts their values (it checks them)."""
  kwargs = _optimizer_kwargs(config)
  _check_kwargs("optimizer", config.optimizer, kwargs, registry.options(config.optimizer))
  try:  # builds the transformation only: nothing is initialised
    registry.build(config.optimizer, learning_rate=0.1, rho=0.1, **kwargs)
  except (ValueError, TypeError) as e:
    option = next((k for k in kwargs if str(e).startswith(f"{k} ")), None)
    where = f"optimizer_kwargs.{option}={kwargs[option]!r}" if option else f"optimizer_kwargs of {config.optimizer}"
    raise ConfigError(f"config.{where}: {e}; set a valid --config.{where.split('=')[0]}.") from None


def synthetic_spec(config: ml_collections.ConfigDict):
  """The synthetic dataset's description (None unless config.dataset is "synthetic").

  Its image shape follows `config.image_size` unless `config.synthetic.image_shape` is set,
  so a config written for ImageNet's sizes runs on synthetic data as it is.
  """
  from msam_jax import data

  if config.dataset != "synthetic":
    return None
  fields = dict(config.synthetic)
  if fields.get("image_shape") is None:
    fields["image_shape"] = _synthetic_image_shape(config)
  return data.synthetic.Spec(**fields)


def _synthetic_image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  size = config.image_size
  return (size, size, 3) if size is not None else (32, 32, 3)


def training_labels(config: ml_collections.ConfigDict):
  """The label noise and validation subset of the run (`msam_jax.data.TrainingLabels`)."""
  from msam_jax import data

  return data.TrainingLabels(config.label_noise, config.label_noise_seed, config.validation_fraction)


def evaluated_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits each evaluation visits: test, then validation and the training split where asked."""
  from msam_jax.data.datasets import IN_MEMORY

  splits = ["test"]
  if config.validation_fraction > 0:
    splits.append("validation")
  if (config.eval_train_split or config.label_noise > 0) and config.dataset in IN_MEMORY:
    splits.append("train")
  return tuple(splits)


def _validate_variants(config: ml_collections.ConfigDict) -> None:
  """GSAM's rho range and schedule; m-sharpness only where the optimizer has groups."""
  entry = registry.get(config.optimizer)
  if entry.rho_follows_lr:
    if config.gsam_rho_min > config.rho:
      raise ConfigError(
        f"config.gsam_rho_min={config.gsam_rho_min!r} exceeds config.rho={config.rho!r} (GSAM's"
        " rho_max); set --config.gsam_rho_min <= --config.rho."
      )
    if config.rho_schedule != "const":
      raise ConfigError(
        f"config.rho_schedule={config.rho_schedule!r} cannot be used with {config.optimizer}"
        " (its rho follows the learning rate); set --config.rho_schedule=const."
      )
  if config.sam_group_size and not entry.has_groups:
    raise ConfigError(
      f"config.sam_group_size={config.sam_group_size} needs an optimizer with m-sharpness"
      f" ({', '.join(n for n in registry.names() if registry.get(n).has_groups)}), not"
      f" {config.optimizer}; set --config.sam_group_size=0."
    )


def validate(config: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1) -> None:
  """`validate_fields`, then the device count and the dataset; raises `ConfigError`.

  Imports the input pipelines (TensorFlow), so the command line runs
  `validate_fields` first.
  """
  from msam_jax import data

  validate_fields(config)
  _choice(config, "dataset", data.DATASETS)
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % num_devices or config[field] % process_count:
      raise ConfigError(
        f"config.{field}={config[field]} is not divisible by the {num_devices} devices"
        f" ({process_count} processes); choose a multiple of {num_devices}."
      )
  if config.dataset == "synthetic":
    try:
      spec = synthetic_spec(config)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.synthetic: {e}") from None
    _check_synthetic_fits_the_model(config, spec)
  for field, datasets, off in (
    ("validation_fraction", data.datasets.WITH_VALIDATION, 0.0),
    ("eval_train_split", data.datasets.IN_MEMORY, False),
  ):
    if config[field] and config.dataset not in datasets:
      raise ConfigError(
        f"config.{field}={config[field]!r} is available for {', '.join(datasets)} only, not"
        f" {config.dataset}; set --config.{field}={off}."
      )
  try:
    info = data.dataset_info(
      config.dataset,
      image_size=config.image_size,
      synthetic=synthetic_spec(config),
      validation_fraction=config.validation_fraction,
    )
    data.steps_per_epoch(info, config.batch_size)
  except ValueError as e:
    raise ConfigError(f"config.dataset={config.dataset!r}: {e}") from None
  _validate_pod(config, num_devices)


def _check_synthetic_fits_the_model(config: ml_collections.ConfigDict, spec) -> None:
  """A model built for `config.image_size` (ViT) gets synthetic images of that size, or one line saying which to set."""
  size = config.image_size if "image_size" in config.model_kwargs else None  # other models take any size
  height, width, channels = spec.image_shape
  if size is not None and (height, width) != (size, size):
    raise ConfigError(
      f"config.image_size={size} ({config.model} takes {size}x{size} images) but config.synthetic.image_shape="
      f"{spec.image_shape} makes {height}x{width} images; set --config.synthetic.image_shape='({size}, {size},"
      f" {channels})' or --config.image_size={height}."
    )


def _divides_per_device_batch(config: ml_collections.ConfigDict, field: str, num_devices: int) -> None:
  """`config[field]` splits each device's share of the global batch evenly."""
  per_device = config.batch_size // num_devices
  if per_device % config[field]:
    raise ConfigError(
      f"config.{field}={config[field]} does not divide the per-device batch {per_device}"
      f" (batch_size {config.batch_size} / {num_devices} devices); choose a divisor of {per_device}."
    )


def _validate_pod(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Sharding, gradient accumulation and preemption fields."""
  from msam_jax.training.mesh import SHARDINGS

  _choice(config, "sharding", SHARDINGS)
  _at_least(config, "fsdp_min_bytes", 0)
  _at_least(config, "grad_accum_steps", 1)
  k = config.grad_accum_steps
  _divides_per_device_batch(config, "grad_accum_steps", num_devices)
  if k > 1 and config.dtype == "float16":
    raise ConfigError(
      f"config.grad_accum_steps={k} is not supported with dtype float16 (its loss scaling runs on"
      " the whole batch); use grad_accum_steps=1 or dtype bfloat16."
    )
  m = config.sam_group_size
  if m:
    _divides_per_device_batch(config, "sam_group_size", num_devices)
  if m and (k > 1 or config.dtype == "float16"):
    raise ConfigError(
      f"config.sam_group_size={m} is not supported with grad_accum_steps > 1 or dtype float16"
      " (each group needs its own unscaled gradients); set --config.sam_group_size=0."
    )
  if m and config.sharding == "fsdp":
    raise ConfigError(
      f"config.sam_group_size={m} is not supported with sharding fsdp (the per-device update holds the"
      " whole parameters and optimizer state on every device); use --config.sharding=replicate"
      " or --config.sam_group_size=0."
    )
  if k > 1 and config.optimizer == "esam":
    raise ConfigError(
      f"config.grad_accum_steps={k} is not supported with esam (it picks examples by sharpness"
      " over the whole batch); use grad_accum_steps=1 or another optimizer."
    )
