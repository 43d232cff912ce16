"""Tunes and trains optimizers on one config over label-noise levels and seeds; the final and early-stopped model.

    python benchmarks/compare_optimizers.py [--config configs/digits.py]
        [--optimizers sgd,msam,sam,sam_late,...] [--seeds 0,1,2,3,4] [--label_noise 0,0.2,0.4]
        [--validation_fraction 0.1] [--no_sweep | --sweep_seed 100 --lr_factors 0.3,1,3
        --msam_rho_grid 0.3,1,3,10 --msam_rho_grid_adamw_lion 0.03,0.1,0.3,1 --sam_rho_grid 0.03,0.1,0.3,1]
        [--epochs N] [--steps N] [--eval_every_epochs 1] [--out benchmarks/results/compare_digits_tuned]
        [--rho msam=1,...] [--lr adamw=3e-3,...] [--weight_decay adamw=0.05,...]
        [--no_sharpness] [--merge] [--dry_run] [--report_only] [--dpi 80]

The protocol (issue 28: a fair comparison, as a practitioner would tune). Each run
calls `msam_jax.training.train_and_evaluate` in this process, in a fresh temporary
workdir, on one device, evaluating every epoch; the loop keeps the model of the
evaluation with the best validation accuracy (`config.best_model_metric`; ties: lower
validation loss) beside the final one and reports it under `best_*`.

Label noise (`config.label_noise`, msam_jax/data/label_noise.py) corrupts the same
training examples in every run of a level (`--label_noise_seed`, not the training
seed). `--validation_fraction` holds out a fixed, stratified part of the training
split with clean labels; each reported run also measures the training split against
its noisy labels (memorisation).

Tuning, on the validation split only, at seed `--sweep_seed` (never reported),
separately at each noise level (a practitioner tunes on their own data), in stages
(`tune`): (a) each base (sgd, adamw, lion) and sgd+mesa sweeps its learning rate over
`--lr_factors` times its centre (SGD's: the config's; AdamW's and Lion's:
BASE_LEARNING_RATE, Lion's a tenth of AdamW's); (b) each sharpness-aware optimizer
sweeps rho over its family's grid at its base's early-stopped choice of learning
rate; (c) then the other learning rates at the rho each criterion chose in (b) (once
when both chose the same). Two criteria choose from the same sweep runs (`choose`):
"final" maximises the final validation accuracy (ties: lower final validation loss),
as for a practitioner who trains to the end; "early_stopped" the best validation
accuracy over training (ties: lower validation loss there), as for one who
early-stops. A variant whose base is not in `--optimizers` still sweeps the base
first (its runs are not reported), so the work splits into processes by optimizer.

Reported: every seed of `--seeds` at each distinct chosen point (one set of runs
when both choices agree). The "final" column is the final model of the final
choice's runs, the "early-stopped" column the best-on-validation model of the
early-stopped choice's runs; each optimizer's test accuracy is paired with its
base's in the same column (same seed and corrupted labels, the base tuned the same
way): the table gives the mean paired difference with a 95 % t-interval over seeds.

`sam_late` is SAM with rho 0 until LATE_SAM_FRACTION (0.8) of training, then rho
(late-phase SAM, Zhou et al., arXiv 2410.10373; config.rho_schedule "start_jump"); its
base is sgd. MESA is compared as `sgd+mesa`: SGD with the MESA loss term on
(`config.mesa_weight`, MESA_FIELDS: the SAF code's lambda 0.3, temperature 5 and
start epoch 6, with the EMA decay scaled to a time constant of one epoch), base sgd;
its EMA model's accuracy is a row of its own ("sgd+mesa EMA", from the same runs).

Time per step is the median over epochs of (epoch wall time / steps), leaving out
the first epoch (compilation) and the last (final probes, checkpoint); it includes
the per-epoch evaluation, which costs every optimizer the same. The time ratio to
the base is taken within a seed and column. The sharpness probes (top Hessian
eigenvalue, SAM sharpness) run at the end of the reported runs only, unless
`--no_sharpness`.

`--dry_run` lists every run the command would make and estimates its wall time
(RUN_SECONDS, measured). Results are saved after every run; a stopped comparison
continues with the same command plus `--merge`, which reuses every finished run
(by `run_key`) and never overwrites one (without `--merge` an existing results.json
is refused). Parallel processes (e.g. `--optimizers` subsets) write separate
`--out` folders that `combine` (benchmarks/results/compare_digits_tuned/combine.py)
joins.

Writes into `--out`: `table.md` (one table per noise level, both columns, the notes),
`results.json` (every run and sweep run with its scores, the grids, both choices per
noise level, the commands, the environment), `accuracy_vs_noise.png` (final and
early-stopped test accuracy and memorisation against the noise level, seed spread),
per noise level `accuracy_vs_epoch.png` and `accuracy_vs_time.png` (the final
choice's runs), and `sharpness.png` only when the probes ran (with a `_noise<p>`
suffix when there are several levels), one colour per optimizer throughout.
`--report_only` redraws everything from results.json.
"""

import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

from msam_jax.optim import registry

# Comparison entries that are a registered optimizer with some config fields set (run_config):
# "<optimizer>+mesa" runs it with the MESA loss term on (config.mesa_weight > 0, MESA_FIELDS);
# "sam_late" is SAM switched on late (Zhou et al., arXiv 2410.10373): rho 0 until
# LATE_SAM_FRACTION of training, then rho (config.rho_schedule "start_jump").
MESA_SUFFIX = "+mesa"
MESA_OPTIMIZERS = ("sgd" + MESA_SUFFIX,)
LATE_SAM = "sam_late"
LATE_SAM_FRACTION = 0.8
VARIANTS = {**{name: name.removesuffix(MESA_SUFFIX) for name in MESA_OPTIMIZERS}, LATE_SAM: "sam"}
OPTIMIZERS = registry.names() + tuple(VARIANTS)


def registry_name(name: str) -> str:
  """The registered optimizer a comparison entry trains with: 'sgd+mesa' -> 'sgd', 'sam_late' -> 'sam'."""
  return VARIANTS.get(name, name)


def comparison_name(config) -> str:
  """The comparison's name of a run's config: its optimizer, 'sam_late' for SAM's late start, '+mesa' with MESA."""
  name = LATE_SAM if config.optimizer == "sam" and config.get("rho_schedule") == "start_jump" else config.optimizer
  return name + (MESA_SUFFIX if config.get("mesa_weight", 0.0) else "")


# The default set (issue 28): each base, its MSAM and SAM variants, LookSAM, late SAM and MESA.
# Left out for the CPU budget: DROPPED (their rows are in benchmarks/results/compare_digits_noise/).
DEFAULT_OPTIMIZERS = (
  "sgd",
  "msam",
  "sam",
  LATE_SAM,
  "looksam",
  "adamw",
  "adamw_msam",
  "adamw_sam",
  "lion",
  "lion_msam",
) + MESA_OPTIMIZERS
DROPPED = tuple(name for name in OPTIMIZERS if name not in DEFAULT_OPTIMIZERS)
# The time ratio and the paired difference of each entry are taken to its base's
# (sgd, adamw or lion; an "<optimizer>+mesa" entry's base is that optimizer).
BASE_OPTIMIZER = {
  name: registry_name(name) if name in MESA_OPTIMIZERS else registry.get(registry_name(name)).base
  for name in OPTIMIZERS
}
# Optimizers that take a rho (the others ignore config.rho).
USES_RHO = tuple(name for name in OPTIMIZERS if registry.get(registry_name(name)).uses_rho)
# MESA's EMA model, reported as a row of its own beside the trained model's (SAF reports the EMA).
EMA_SUFFIX = " EMA"
for _name in MESA_OPTIMIZERS:
  BASE_OPTIMIZER[_name + EMA_SUFFIX] = BASE_OPTIMIZER[_name]
# Fixed, so an optimizer has the same colour in every plot and every output folder
# (registry order; optimizers beyond the palette reuse it from the start).
PALETTE = (
  "#1f77b4",
  "#d62728",
  "#ff7f0e",
  "#bcbd22",
  "#8c564b",
  "#2ca02c",
  "#9467bd",
  "#e377c2",
  "#7f7f7f",
  "#17becf",
  "#aec7e8",
  "#ffbb78",
  "#98df8a",
  "#ff9896",
  "#000000",
  "#c49c94",
  "#393b79",
)
COLORS = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(OPTIMIZERS)}

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "digits.py")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compare_digits_tuned")
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
# Sweep grids (log spaced; issue 28). rho: the MSAM family around SGD up to 10 (a distance along
# the normalised momentum; the original's commands use 3), the SAM family up to 1; MSAM around
# AdamW and Lion chose the smallest point of 0.3, 1, 3 in the noisy-label comparison
# (benchmarks/results/compare_digits_noise), so its grid is a decade lower.
DEFAULT_MSAM_RHO_GRID = "0.3,1,3,10"
DEFAULT_MSAM_RHO_GRID_ADAMW_LION = "0.03,0.1,0.3,1"
DEFAULT_SAM_RHO_GRID = "0.03,0.1,0.3,1"
# The learning rate: these times each base's centre (SGD: the config's 0.1; BASE_LEARNING_RATE), a 10x span.
DEFAULT_LR_FACTORS = "0.3,1,3"
# The two choices of each optimizer's hyper-parameters (choose()): by the final validation accuracy
# (a practitioner who trains to the end) and by the best one over training (one who early-stops).
CRITERIA = ("final", "early_stopped")
# What each choice scores on the validation split, and which test accuracy its column reports.
CRITERION_KEYS = {
  "final": ("final_validation_accuracy", "final_validation_loss", "final_eval_accuracy"),
  "early_stopped": ("best_validation_accuracy", "best_validation_loss", "best_eval_accuracy"),
}
DEFAULT_SEEDS = "0,1,2,3,4"
DEFAULT_LABEL_NOISE = "0,0.2,0.4"
SWEEP_SEED = 100  # never a reported seed
# Lion's weight decay is optax.lion's own, named explicitly: the config file's optimizer (digits:
# msam, 5e-4) would otherwise hand its value of the option of the same name to Lion (set_optimizer).
_LION_FAMILY = [name for name in OPTIMIZERS if BASE_OPTIMIZER[name] == "lion"]
DEFAULT_WEIGHT_DECAY = ",".join(
  [f"{name}=0.05" for name in _ADAMW_FAMILY]
  + [f"{name}={registry.options('lion')['weight_decay']:g}" for name in _LION_FAMILY]
)

# The training loop's config field that keeps the best-on-validation model (issue 28).
BEST_MODEL_FIELD = "best_model_metric"
# Per-run numbers copied from the training library's results, and the summary's metrics.
RUN_FIELDS = (
  "final_eval_accuracy",
  "final_eval_loss",
  "final_train_loss",
  "final_train_accuracy",
  "final_sam_sharpness",
  "final_hessian_max_eigenvalue",
  "train_seconds",
  "seconds_per_step_excluding_compilation",
  "eval_accuracy_before_bn_recompute",
  "steps",
  "epochs",
  "final_validation_accuracy",
  "final_validation_loss",
  "final_noisy_train_accuracy",
  "final_noisy_train_loss",
  "label_noise",
  "label_noise_realised_fraction",
  # The best-on-validation model (config.best_model_metric): its step, its validation and test
  # metrics, its accuracy against the noisy training labels.
  "best_step",
  "best_epoch",
  "best_validation_accuracy",
  "best_validation_loss",
  "best_eval_accuracy",
  "best_eval_loss",
  "best_noisy_train_accuracy",
  # MESA's EMA model at the end of training.
  "final_ema_eval_accuracy",
  "final_ema_eval_loss",
  "final_ema_validation_accuracy",
)
# Per-evaluation numbers kept in each run's history.
HISTORY_FIELDS = (
  "epoch",
  "step",
  "seconds",
  "accuracy",
  "loss",
  "validation_accuracy",
  "validation_loss",
  "noisy_train_accuracy",
)
SUMMARY_FIELDS = (
  "final_eval_accuracy",
  "final_validation_accuracy",
  "final_noisy_train_accuracy",
  "best_eval_accuracy",
  "best_validation_accuracy",
  "best_noisy_train_accuracy",
  "best_epoch",
  "final_eval_loss",
  "final_train_loss",
  "final_sam_sharpness",
  "final_hessian_max_eigenvalue",
  "training_seconds",
  "train_seconds",
  "seconds_per_step",
  "seconds_per_step_excluding_compilation",
  "time_per_step_vs_base",
)


# ----------------------------------------------------------------------------- input


def parse_list(text: str, flag: str, choices=None) -> list[str]:
  """'a,b,c' -> ['a', 'b', 'c']; ValueError naming `flag` if empty, repeated or not in `choices`."""
  items = [s.strip() for s in text.split(",") if s.strip()]
  if not items:
    raise ValueError(f"{flag} is empty; give a comma-separated list.")
  if len(set(items)) != len(items):
    raise ValueError(f"{flag}={text!r} names an entry twice.")
  if choices is not None:
    for item in items:
      if item not in choices:
        raise ValueError(f"{flag}: {item!r} is not valid; choose from {', '.join(choices)}.")
  return items


def parse_seeds(text: str) -> list[int]:
  """'0,1,2' -> [0, 1, 2]; ValueError for anything but non-negative integers."""
  seeds = parse_list(text, "--seeds")
  try:
    values = [int(s) for s in seeds]
  except ValueError:
    raise ValueError(f"--seeds={text!r}: seeds must be non-negative integers, e.g. 0,1,2.") from None
  if any(v < 0 for v in values):
    raise ValueError(f"--seeds={text!r}: seeds must be non-negative integers, e.g. 0,1,2.")
  return values


def parse_numbers(text: str, flag: str, *, low: float, high: float | None = None, low_open=False) -> list[float]:
  """'0,0.2,0.4' -> [0.0, 0.2, 0.4]; ValueError naming `flag` unless each is in [low, high).

  `low_open`: (low, high) instead; no `high`: no upper bound.
  """
  items = parse_list(text, flag)
  interval = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else format(high, 'g')})"
  try:
    values = [float(s) for s in items]
  except ValueError:
    raise ValueError(f"{flag}={text!r}: give comma-separated numbers in {interval}.") from None
  for v in values:
    if not (v > low if low_open else v >= low) or (high is not None and not v < high):
      raise ValueError(f"{flag}={text!r}: {v:g} is not in {interval}.")
  return values


def parse_overrides(text: str, flag: str) -> dict[str, float]:
  """'msam=0.3,sam=0.05' -> {'msam': 0.3, 'sam': 0.05}; '' -> {}."""
  overrides = {}
  for item in (s.strip() for s in text.split(",")):
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or name not in OPTIMIZERS:
      raise ValueError(f"{flag}: {item!r} is not optimizer=value with an optimizer from {', '.join(OPTIMIZERS)}.")
    try:
      number = float(value)
    except ValueError:
      raise ValueError(f"{flag}: {item!r} has a value that is not a number.") from None
    if not number >= 0:
      raise ValueError(f"{flag}: {item!r} must be a non-negative number.")
    overrides[name] = number
  return overrides


def load_config_module(path: str):
  """The module of a config file (which defines `get_config()`), imported from its path."""
  if not os.path.isfile(path):
    raise ValueError(f"--config={path!r} is not a file; give a path such as configs/digits.py.")
  spec = importlib.util.spec_from_file_location(f"compare_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config={path!r} defines no get_config().")
  return module


def _steps_per_epoch(config) -> int:
  from msam_jax import data

  info = data.dataset_info(
    config.dataset, image_size=config.image_size, validation_fraction=config.get("validation_fraction", 0.0)
  )
  return data.steps_per_epoch(info, config.batch_size)


def _field(config, path: str):
  """`config`'s value at a flattened path such as ``optimizer_kwargs.eta``."""
  return functools.reduce(lambda c, key: c[key], path.split("."), config)


def run_config(
  config_module,
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

  config = config_module.get_config()
  set_optimizer(config, registry_name(optimizer))  # the options it shares with the file's optimizer keep their values
  config.seed = seed
  config.label_noise = label_noise
  config.label_noise_seed = label_noise_seed
  config.validation_fraction = validation_fraction
  config.eval_train_split = True  # memorisation at every noise level, 0 included
  config.update_from_flattened_dict(DEFAULT_FIELDS.get(optimizer, {}))
  if optimizer in MESA_OPTIMIZERS:
    config.mesa_decay = 1.0 - 1.0 / _steps_per_epoch(config)  # the EMA's time constant: one epoch
  if epochs is not None:
    config.num_epochs = epochs
  if steps is not None:
    config.num_train_steps = steps
  if optimizer == LATE_SAM:  # rho 0, then rho from LATE_SAM_FRACTION of the run's length
    length = config.num_train_steps / _steps_per_epoch(config) if config.num_train_steps > 0 else config.num_epochs
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
  config.log_every_steps = _steps_per_epoch(config)
  # Only the measurement at the end; off (0) skips the probes, whose compilation dominates short runs.
  config.sharpness_every_steps = 2**31 - 1 if sharpness else 0
  config.checkpoint_every_steps = 0  # only the final checkpoint, into a throw-away workdir
  return config


# ----------------------------------------------------------------------------- runs


def steady_seconds_per_step(eval_history: list[dict]) -> float | None:
  """Median over epochs of seconds per step, leaving out the first and the last epoch.

  The first epoch holds the compilations, the last the final probes and the
  checkpoint. None when there are fewer than three evaluations.
  """
  clean = zip(eval_history[:-2], eval_history[1:-1])  # (end of epoch k-1, end of epoch k)
  rates = [(cur["seconds"] - prev["seconds"]) / (cur["step"] - prev["step"]) for prev, cur in clean]
  return statistics.median(rates) if rates else None


def training_seconds(eval_history: list[dict], seconds_per_step: float) -> list[float]:
  """Seconds since training start at each evaluation, without the final probes' time.

  The loop measures the sharpness probes of the last step (and their
  compilation, often longer than a short run's training) inside its clock, so
  the last evaluation's time is estimated as the one before plus the last
  epoch's steps at the median step time.
  """
  seconds = [e["seconds"] for e in eval_history]
  if len(eval_history) >= 2:
    prev, last = eval_history[-2], eval_history[-1]
    seconds[-1] = prev["seconds"] + (last["step"] - prev["step"]) * seconds_per_step
  return seconds


def train_one(config, mesh) -> dict:
  """Trains in a fresh temporary workdir; the run's record for results.json."""
  from msam_jax.training import train_and_evaluate

  with tempfile.TemporaryDirectory(prefix="compare_optimizers_") as workdir:
    start = time.time()
    results = train_and_evaluate(config, workdir, mesh=mesh)
    wall = time.time() - start
  name = comparison_name(config)
  fields = list(DEFAULT_FIELDS.get(name, {}))
  if name in MESA_OPTIMIZERS:
    fields += ["mesa_decay", "mesa_start_epoch", "mesa_temperature"]
  if name == LATE_SAM:
    fields += ["rho_schedule", "rho_jump_epochs"]
  record = {
    "run_key": run_key(config),
    "optimizer": name,
    "seed": config.seed,
    "label_noise": config.label_noise,
    "rho": config.rho if name in USES_RHO else None,
    "learning_rate": config.learning_rate,
    "weight_decay": config.optimizer_kwargs.weight_decay,
    "fields": {k: _field(config, k) for k in fields},
  }
  record.update({k: results[k] for k in RUN_FIELDS if k in results})
  record["seconds_per_step"] = steady_seconds_per_step(results["eval_history"])
  if record["seconds_per_step"] is None:
    record["seconds_per_step"] = results["seconds_per_step_excluding_compilation"]
  record["wall_seconds_including_setup"] = wall
  history = results["eval_history"]
  record["eval_history"] = [
    {**{k: e[k] for k in HISTORY_FIELDS if k in e}, "training_seconds": t}
    for e, t in zip(history, training_seconds(history, record["seconds_per_step"]))
  ]
  record["training_seconds"] = record["eval_history"][-1]["training_seconds"]
  return record


def run_key(config) -> str:
  """What makes two runs the same run (--merge reuses a finished one): entry, seed, noise, lr, rho, length."""
  name = comparison_name(config)
  steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * _steps_per_epoch(config)
  rho = f"{config.rho:.6g}" if name in USES_RHO else "-"
  return (
    f"{name} seed {config.seed} noise {config.label_noise:g} lr {config.learning_rate:.6g} rho {rho} steps {steps:g}"
  )


def print_run(record: dict) -> None:
  """One line: the final and the best-on-validation model's accuracies, the cost."""
  best = (
    f"; best on validation at epoch {record['best_epoch']:g}: val {100 * record['best_validation_accuracy']:.2f}%,"
    f" test {100 * record['best_eval_accuracy']:.2f}%"
    if record.get("best_validation_accuracy") is not None
    else ""
  )
  probes = (
    f", hessian max eig {record['final_hessian_max_eigenvalue']:.4g}"
    if "final_hessian_max_eigenvalue" in record
    else ""
  )
  final = ", ".join(
    f"{label} {100 * record[key]:.2f}%"
    for key, label in (
      ("final_validation_accuracy", "val"),
      ("final_eval_accuracy", "test"),
      ("final_noisy_train_accuracy", "noisy-train"),
    )
    if record.get(key) is not None
  )
  print(
    f"  {record['run_key']}: final {final}{best}{probes}; {1000 * record['seconds_per_step']:.1f} ms/step,"
    f" {record['wall_seconds_including_setup']:.1f} s with setup",
    flush=True,
  )


# ----------------------------------------------------------------------------- summary


def _mean_std(values: list[float]) -> dict:
  """Mean and sample standard deviation (ddof=1; 0 for one value) of the non-None values."""
  values = [v for v in values if v is not None]
  if not values:
    return {"mean": None, "std": None, "n": 0, "values": []}
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def noise_of(run: dict) -> float:
  """A run's label-noise level (0 for runs recorded before the option existed)."""
  return run.get("label_noise") or 0.0


def level_key(level: float) -> str:
  """A noise level as results.json's keys and the file names write it: 0, 0.2, 0.4."""
  return f"{level:g}"


def noise_levels(runs: list[dict]) -> list[float]:
  return sorted({noise_of(r) for r in runs})


def columns_of(run: dict) -> list[str]:
  """The columns (CRITERIA) a reported run serves: the choices that chose its point (before them: final)."""
  return run.get("chosen_by") or ["final"]


def column_runs(runs: list[dict], column: str) -> list[dict]:
  return [r for r in runs if column in columns_of(r)]


def add_time_ratios(runs: list[dict]) -> None:
  """Sets each run's `time_per_step_vs_base`: its time per step over its base's in the same seed and noise level.

  The base's run of the same column (its first); None when the base did not run that seed.
  """
  step_time = {(r["optimizer"], r["seed"], noise_of(r), c): r["seconds_per_step"] for r in runs for c in columns_of(r)}
  for r in runs:
    base = step_time.get((BASE_OPTIMIZER[r["optimizer"]], r["seed"], noise_of(r), columns_of(r)[0]))
    r["time_per_step_vs_base"] = r["seconds_per_step"] / base if base else None


def ema_rows(runs: list[dict]) -> list[dict]:
  """MESA's EMA model as runs of their own ('sgd+mesa EMA'), from the final column's runs that measured it.

  Its final accuracies are the EMA model's; it has no best-on-validation model of its own.
  """
  rows = []
  for r in column_runs(runs, "final"):
    if r["optimizer"] in MESA_OPTIMIZERS and r.get("final_ema_eval_accuracy") is not None:
      row = {k: v for k, v in r.items() if not k.startswith(("final_", "best_"))}
      row.update(
        optimizer=r["optimizer"] + EMA_SUFFIX,
        chosen_by=["final"],
        final_eval_accuracy=r["final_ema_eval_accuracy"],
        final_eval_loss=r["final_ema_eval_loss"],
        final_validation_accuracy=r.get("final_ema_validation_accuracy"),
      )
      rows.append(row)
  return rows


def t_interval(values: list[float], confidence: float = 0.95) -> dict:
  """Mean of `values` with its two-sided Student-t interval (n - 1 degrees of freedom).

  {mean, std (ddof=1), n, low, high, values}; low and high are None for fewer than two values.
  """
  from scipy import stats

  n = len(values)
  if n == 0:
    return {"mean": None, "std": None, "n": 0, "low": None, "high": None, "values": []}
  mean = statistics.fmean(values)
  if n < 2:
    return {"mean": mean, "std": None, "n": 1, "low": None, "high": None, "values": list(values)}
  std = statistics.stdev(values)
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / n**0.5
  return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half, "values": list(values)}


def paired_differences(runs: list[dict], optimizers: list[str], field: str = "final_eval_accuracy") -> dict:
  """noise level -> optimizer -> `t_interval` of (its `field` - its base's) over the seeds both ran.

  The pairs share the seed and the corrupted labels (label_noise_seed), so the
  seed-to-seed variation they have in common cancels. Base optimizers are left out.
  """
  out = {}
  for level in noise_levels(runs):
    value = {(r["optimizer"], r["seed"]): r.get(field) for r in runs if noise_of(r) == level}
    level_out = {}
    for name in optimizers:
      base = BASE_OPTIMIZER[name]
      if base == name:
        continue
      seeds = sorted(
        seed for (n, seed), v in value.items() if n == name and v is not None and value.get((base, seed)) is not None
      )
      if any(n == name for n, _ in value):
        level_out[name] = {
          "base": base,
          "seeds": seeds,
          **t_interval([value[(name, seed)] - value[(base, seed)] for seed in seeds]),
        }
    out[level_key(level)] = level_out
  return out


def summarize(runs: list[dict], optimizers: list[str]) -> dict:
  """optimizer -> metric -> {mean, std, n, values} over seeds."""
  summary = {}
  for name in optimizers:
    own = [r for r in runs if r["optimizer"] == name]
    if own:
      summary[name] = {k: _mean_std([r.get(k) for r in own]) for k in SUMMARY_FIELDS}
  return summary


def _cell(stat: dict, fmt: str, scale: float = 1.0) -> str:
  if stat is None or stat["mean"] is None:
    return "n/a"
  if stat["n"] == 1:
    return format(scale * stat["mean"], fmt)
  return f"{format(scale * stat['mean'], fmt)} ± {format(scale * stat['std'], fmt)}"


def _difference_cell(paired: dict | None, name: str) -> str:
  """'+0.56 [-0.12, +1.24]' (percentage points, 95 % t-interval) or why there is none."""
  if BASE_OPTIMIZER[name] == name:
    return "– (base)"
  d = (paired or {}).get(name)
  if d is None or d["mean"] is None:
    return f"n/a ({BASE_OPTIMIZER[name]} not run)"
  if d["low"] is None:
    return f"{100 * d['mean']:+.2f} (one seed)"
  return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def _hparams_cell(runs: list[dict], name: str) -> str:
  """'lr 0.1, rho 3': the values `name`'s runs trained with ('–' when it has none here)."""
  own = [r for r in runs if r["optimizer"] == name]
  lrs = sorted({r["learning_rate"] for r in own})
  rhos = sorted({r["rho"] for r in own if r.get("rho") is not None})
  text = ", ".join(f"{k} {'/'.join(f'{v:g}' for v in vs)}" for k, vs in (("lr", lrs), ("rho", rhos)) if vs)
  return text or "–"


def markdown_table(summary: dict, runs: list[dict], paired: dict | None = None) -> str:
  """One noise level's table: one row per optimizer, mean ± std over its seeds, both columns (CRITERIA).

  `summary` and `paired`: this level's, column -> optimizer -> ...; `runs`: this level's runs (rows included).
  """
  header = (
    "| optimizer | final: hyper-parameters | final: test accuracy (%) | final: Δ vs base (pp, 95 % CI) | "
    "early-stopped: hyper-parameters | early-stopped: epoch | early-stopped: test accuracy (%) | "
    "early-stopped: Δ vs base (pp, 95 % CI) | validation accuracy, final / early-stopped (%) | "
    "noisy-train accuracy, final / early-stopped (%) | Hessian max eigenvalue | time per step (ms) | "
    "time per step vs base |"
  )
  num_columns = header.count("|") - 1
  lines = [header, "|---|" + "---:|" * (num_columns - 1)]
  paired = paired or {}
  final, stopped = summary.get("final", {}), summary.get("early_stopped", {})
  final_runs, stopped_runs = column_runs(runs, "final"), column_runs(runs, "early_stopped")
  for name in dict.fromkeys(list(final) + list(stopped)):
    f, e = final.get(name), stopped.get(name)
    timing = f or e
    base = BASE_OPTIMIZER[name]
    ratio = (
      "1 (base)"
      if base == name
      else (
        f"{_cell(timing['time_per_step_vs_base'], '.2f')} × {base}"
        if timing["time_per_step_vs_base"]["mean"] is not None
        else f"n/a ({base} not run)"
      )
    )
    cells = [
      name,
      _hparams_cell(final_runs, name) if f else "n/a",
      _cell(f and f["final_eval_accuracy"], ".2f", 100),
      _difference_cell(paired.get("final"), name) if f else "n/a",
      _hparams_cell(stopped_runs, name) if e else "n/a",
      _cell(e and e["best_epoch"], ".1f"),
      _cell(e and e["best_eval_accuracy"], ".2f", 100),
      _difference_cell(paired.get("early_stopped"), name) if e else "n/a",
      f"{_cell(f and f['final_validation_accuracy'], '.2f', 100)} / "
      f"{_cell(e and e['best_validation_accuracy'], '.2f', 100)}",
      f"{_cell(f and f['final_noisy_train_accuracy'], '.2f', 100)} / "
      f"{_cell(e and e['best_noisy_train_accuracy'], '.2f', 100)}",
      _cell(timing["final_hessian_max_eigenvalue"], ".2f"),
      _cell(timing["seconds_per_step"], ".1f", 1000),
      ratio,
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
  """A figure drawn by the Agg backend, without touching pyplot's global state."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _save_png(figure, path: str, dpi: int) -> None:
  """PNG with a 256-colour palette: a fraction of the bytes, no visible change for line plots."""
  import io

  from PIL import Image

  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  buffer.seek(0)
  Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)


def mean_curves(runs: list[dict], optimizers: list[str]) -> dict:
  """optimizer -> {epoch, seconds, accuracy, accuracy_std} per evaluation, means over seeds.

  Seeds of one optimizer evaluate at the same steps; a shorter history (a run
  that stopped early) truncates the curve to the evaluations all seeds have.
  """
  curves = {}
  for name in optimizers:
    histories = [r["eval_history"] for r in runs if r["optimizer"] == name]
    if not histories:
      continue
    length = min(len(h) for h in histories)
    points = [[h[i] for h in histories] for i in range(length)]
    curves[name] = {
      "epoch": [p[0]["epoch"] for p in points],
      "seconds": [statistics.fmean(e["training_seconds"] for e in p) for p in points],
      "accuracy": [statistics.fmean(100 * e["accuracy"] for e in p) for p in points],
      "accuracy_std": [statistics.stdev([100 * e["accuracy"] for e in p]) if len(p) > 1 else 0.0 for p in points],
    }
  return curves


def plot_accuracy(curves: dict, x: str, xlabel: str, title: str, path: str, dpi: int) -> None:
  """Test accuracy (mean over seeds, band: ± std) against `x`; right panel zoomed on the end."""
  figure = _new_figure(10, 3.8)
  full, zoom = figure.subplots(1, 2)
  for axes in (full, zoom):
    for name, c in curves.items():
      low = [m - s for m, s in zip(c["accuracy"], c["accuracy_std"])]
      high = [min(m + s, 100.0) for m, s in zip(c["accuracy"], c["accuracy_std"])]
      axes.plot(c[x], c["accuracy"], color=COLORS[name], label=name, linewidth=1.5)
      axes.fill_between(c[x], low, high, color=COLORS[name], alpha=0.12, linewidth=0)
    axes.set_xlabel(xlabel)
    axes.grid(alpha=0.3)
  full.set_ylabel("test accuracy (%)")
  full.set_title(title)
  full.legend(loc="lower right", fontsize=8)
  # Zoom: the last two thirds of the evaluations, y fitted to the means there.
  x_start = min(c[x][len(c[x]) // 3] for c in curves.values())
  x_end = max(c[x][-1] for c in curves.values())
  tail = [a for c in curves.values() for a in c["accuracy"][len(c[x]) // 3 :]]
  zoom.set_xlim(x_start, x_end + 0.01 * (x_end - x_start) + 1e-9)
  zoom.set_ylim(min(tail) - 0.5, max(tail) + 0.5)
  zoom.set_title(f"zoom: {x.replace('seconds', 'time')} from {x_start:.3g}")
  _save_png(figure, path, dpi)


def plot_sharpness(runs: list[dict], summary: dict, sharpness_rho, path: str, dpi: int) -> None:
  """Bars: mean over seeds (error bar: std), dots: the seeds; one colour per optimizer."""
  figure = _new_figure(10, 3.6)
  panels = (
    ("final_sam_sharpness", f"SAM sharpness (rho={sharpness_rho})"),
    ("final_hessian_max_eigenvalue", "Hessian max eigenvalue"),
  )
  names = list(summary)
  for axes, (key, label) in zip(figure.subplots(1, 2), panels):
    for i, name in enumerate(names):
      stat = summary[name][key]
      if stat["mean"] is None:
        axes.text(i, 0, "not\nmeasured", ha="center", va="bottom", fontsize=8)
        continue
      axes.bar(i, stat["mean"], yerr=stat["std"], color=COLORS[name], capsize=3, alpha=0.85)
      axes.plot([i] * stat["n"], stat["values"], "o", color="black", markersize=3)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_title(f"{label} at the end of training")
    axes.grid(axis="y", alpha=0.3)
  _save_png(figure, path, dpi)


def plot_accuracy_vs_noise(runs: list[dict], optimizers: list[str], path: str, dpi: int) -> None:
  """Test accuracy of the final (left) and the early-stopped model (middle), memorisation (right), against noise.

  One line per optimizer through the means over seeds, error bars ± std, dots the seeds
  (offset a little sideways so that the optimizers stay apart). Each panel shows the runs of
  its column (the hyper-parameters its criterion chose); the two accuracy panels share the y axis.
  """
  figure = _new_figure(14, 4.2)
  panels = (
    ("final", "final_eval_accuracy", "final model: test accuracy (%)"),
    ("early_stopped", "best_eval_accuracy", "best-on-validation model: test accuracy (%)"),
    ("final", "final_noisy_train_accuracy", "final model: accuracy on the noisy training labels (%)"),
  )
  levels = noise_levels(runs)
  span = (levels[-1] - levels[0]) or 1.0
  names = [n for n in optimizers if any(r["optimizer"] == n for r in runs)]
  axes_list = figure.subplots(1, 3)
  axes_list[1].sharey(axes_list[0])
  for axes, (column, key, label) in zip(axes_list, panels):
    own = column_runs(runs, column)
    for i, name in enumerate(names):
      shift = span * 0.012 * (i - (len(names) - 1) / 2)
      xs, means, stds = [], [], []
      for level in levels:
        values = [
          100 * r[key] for r in own if r["optimizer"] == name and noise_of(r) == level and r.get(key) is not None
        ]
        if not values:
          continue
        xs.append(level + shift)
        means.append(statistics.fmean(values))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        axes.plot([level + shift] * len(values), values, ".", color=COLORS[name], markersize=3, alpha=0.6)
      if xs:
        axes.errorbar(xs, means, yerr=stds, color=COLORS[name], label=name, linewidth=1.3, capsize=2)
    axes.set_xlabel("label noise (fraction of training labels replaced)")
    axes.set_ylabel(label)
    axes.set_xticks(levels, [level_key(v) for v in levels])
    axes.grid(alpha=0.3)
  axes_list[0].set_title("trained to the end (mean ± std; dots: seeds)")
  axes_list[1].set_title("early-stopped on validation")
  axes_list[2].set_title("memorisation (final model)")
  axes_list[0].legend(fontsize=7, ncol=2)
  _save_png(figure, path, dpi)


# ----------------------------------------------------------------------------- output


def environment() -> dict:
  import jax

  device = jax.devices()[0]
  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "jax": jax.__version__,
    "platform": device.platform,
    "device": device.device_kind,
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "python": platform.python_version(),
  }


def write_json(path: str, payload: dict) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, indent=1)
  os.replace(path + ".tmp", path)


def write_report(out: str, payload: dict, dpi: int = 80) -> None:
  """table.md, results.json (with the summaries) and the PNGs from the runs in `payload`.

  `summary` and `paired_vs_base` are keyed by noise level ("0", "0.2", ...), then column
  (CRITERIA), then optimizer (with MESA's EMA model as "sgd+mesa EMA").
  """
  runs, optimizers = payload["runs"], payload["optimizers"]
  add_time_ratios(runs)
  rows = runs + ema_rows(runs)
  names = [x for n in optimizers for x in (n, n + EMA_SUFFIX) if x == n or any(r["optimizer"] == x for r in rows)]
  levels = noise_levels(runs)
  payload["summary"], payload["paired_vs_base"] = {}, {}
  sections = []
  for level in levels:
    key = level_key(level)
    level_rows = [r for r in rows if noise_of(r) == level]
    summary = {c: summarize(column_runs(level_rows, c), names) for c in CRITERIA}
    paired = {
      c: paired_differences(column_runs(level_rows, c), names, CRITERION_KEYS[c][2]).get(key, {}) for c in CRITERIA
    }
    payload["summary"][key], payload["paired_vs_base"][key] = summary, paired
    table = markdown_table(summary, level_rows, paired)
    sections.append(f"### Label noise {key}\n\n{table}" if len(levels) > 1 else table)
  write_json(os.path.join(out, "results.json"), payload)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(sections) + "\n" + table_notes(payload) + "\n")
  if len(levels) > 1:
    plot_accuracy_vs_noise(runs, optimizers, os.path.join(out, "accuracy_vs_noise.png"), dpi)
  for level in levels:
    key = level_key(level)
    level_runs = column_runs([r for r in runs if noise_of(r) == level], "final")
    suffix = f"_noise{key}" if len(levels) > 1 else ""
    title = "test accuracy (mean over seeds; final choice)" + (f", label noise {key}" if len(levels) > 1 else "")
    curves = mean_curves(level_runs, optimizers)
    plot_accuracy(curves, "epoch", "epoch", title, os.path.join(out, f"accuracy_vs_epoch{suffix}.png"), dpi)
    plot_accuracy(
      curves,
      "seconds",
      "wall-clock seconds (compilation included)",
      title,
      os.path.join(out, f"accuracy_vs_time{suffix}.png"),
      dpi,
    )
    if any(r.get("final_hessian_max_eigenvalue") is not None for r in level_runs):  # nothing to show without
      summary = payload["summary"][key]["final"]
      plot_sharpness(level_runs, summary, payload["sharpness_rho"], os.path.join(out, f"sharpness{suffix}.png"), dpi)


def _format(value) -> str:
  return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def table_notes(payload: dict) -> str:
  """What the table's columns measure, and under which settings and machine load."""
  runs, env = payload["runs"], payload["environment"]
  other = {}  # the optimizer-specific config fields (DEFAULT_FIELDS, late SAM's, MESA's), grouped
  for r in runs:
    if r.get("fields"):
      other.setdefault(tuple(sorted(r["fields"].items())), []).append(r["optimizer"])
  fields = "; ".join(
    f"{', '.join(dict.fromkeys(names))}: {', '.join(f'{k} {_format(v)}' for k, v in items)}"
    for items, names in other.items()
  )
  decays = {}
  for r in runs:
    decays.setdefault(r["weight_decay"], []).append(r["optimizer"])
  decay = "; ".join(f"{', '.join(dict.fromkeys(names))}: {wd:g}" for wd, names in decays.items())
  load = f"load average {payload['load_average_start'][0]:.1f} at the start"
  if payload.get("load_average_end"):
    load += f", {payload['load_average_end'][0]:.1f} at the end"
  sharpness = (
    "not measured"
    if payload["sharpness_rho"] is None
    else "top Hessian eigenvalue at the end of training (final choice's runs), at the unperturbed parameters,"
    " on one fixed training batch"
  )
  levels = noise_levels(runs)
  noise = (
    f"Label noise {', '.join(level_key(v) for v in levels)} (symmetric: that fraction of the training labels"
    f" replaced by another class, the same examples for every optimizer and seed: label_noise_seed"
    f" {payload.get('label_noise_seed', 0)}; realised fractions {_realised(runs)})."
    if any(levels)
    else "No label noise."
  )
  validation = (
    f"Validation: {payload['validation_fraction']:g} of the training split (fixed, stratified, clean labels),"
    " held out of training."
    if payload.get("validation_fraction")
    else "No validation split."
  )
  left_out = [n for n in DROPPED if n not in payload["optimizers"]]
  ema = any(r["optimizer"] in MESA_OPTIMIZERS for r in runs)
  return "\n".join(
    [
      f"{payload['config_name']}, {payload['epochs']:g} epochs, evaluated every epoch, seeds "
      f"{', '.join(str(s) for s in payload['seeds'])}; mean ± sample std over seeds.",
      f"{noise} {validation}",
      sweep_notes(payload),
      "Final: the model at the end of training, with the hyper-parameters chosen by the final validation"
      " accuracy. Early-stopped: the model of the evaluation with the best validation accuracy (ties: lower"
      " validation loss; the training loop's best_model_metric), with the hyper-parameters chosen by that"
      " best validation accuracy; its epoch, test, validation and noisy-train accuracy are that evaluation's."
      " When both choices agree the same runs fill both columns.",
      "Δ vs base: mean over seeds of (test accuracy - the base optimizer's of the same seed, noise level and"
      " column, each with its own chosen hyper-parameters), percentage points, with the 95 % Student-t interval"
      " over those seeds; sam_late's and sgd+mesa's base is sgd. Noisy-train accuracy: the training split"
      " (validation excluded) evaluated against the labels it trained with; at noise > 0, high values mean the"
      " corrupted labels were memorised.",
      (
        "sgd+mesa EMA: the same runs as sgd+mesa, evaluated with MESA's EMA model at the end of training"
        " (SAF reports the EMA); it has no early-stopped model. "
        if ema
        else ""
      )
      + f"Weight decay: {decay}."
      + (f" Other fields: {fields}." if fields else "")
      + (
        f" Not in this comparison (CPU budget; their noisy-label rows, untuned, are in"
        f" benchmarks/results/compare_digits_noise): {', '.join(left_out)}."
        if left_out
        else ""
      ),
      f"Sharpness: {sharpness}.",
      "Time per step: median over epochs of epoch time / steps (per-epoch evaluation included), the first and"
      " last epoch left out; vs base: the ratio to the base optimizer's run of the same seed and column, mean ±"
      " std over seeds.",
      f"Machine: one {env['platform']} device ({env['device']}), {env['cpu_count']} cores,"
      f" jax {env.get('jax', '?')}; {load}.",
    ]
  )


def _realised(runs: list[dict]) -> str:
  """'0.2: 0.203, 0.4: 0.405': the fraction of training labels each level changed."""
  realised = {}
  for r in runs:
    if noise_of(r) and r.get("label_noise_realised_fraction") is not None:
      realised[noise_of(r)] = r["label_noise_realised_fraction"]
  return ", ".join(f"{level_key(k)}: {v:.3f}" for k, v in sorted(realised.items())) or "not recorded"


def sweep_notes(payload: dict) -> str:
  """How each optimizer's hyper-parameters were chosen: the staged sweep, its grids, the two criteria."""
  sweep = payload.get("sweep")
  if not sweep:
    return "Hyper-parameters: fixed (--rho, --lr), not swept in this comparison; both columns are the same runs."
  grids = "; ".join(
    f"{name}: "
    + ", ".join(f"{k.replace('learning_rate', 'lr')} {'/'.join(f'{v:g}' for v in vs)}" for k, vs in g.items() if vs)
    for name, g in sweep["grid"].items()
  )
  return (
    f"Hyper-parameters chosen on the validation split, separately at each noise level, by runs at seed"
    f" {sweep['seed']} (not reported), never on the test split, in stages: each base (sgd, adamw, lion) and"
    " sgd+mesa sweep the learning rate; each sharpness-aware optimizer sweeps rho at its base's early-stopped"
    " choice of learning rate, then the other learning rates at the rho each criterion chose. Each column's"
    " choice is the best of its optimizer's sweep runs by its criterion: the final validation accuracy (ties:"
    " lower final validation loss) or the best validation accuracy over training (ties: lower validation loss"
    f" there). Grids: {grids}."
  )


# What a results.json written before label noise and validation existed implies.
DEFAULT_PAYLOAD = {"label_noise_levels": [0.0], "validation_fraction": 0.0, "eval_every_epochs": None}
# Settings that runs reported together must share (--merge, combine).
SHARED_SETTINGS = (
  "config_name",
  "seeds",
  "epochs",
  "eval_every_epochs",
  "sharpness_rho",
  "validation_fraction",
  "label_noise_seed",
)


def merge_previous(payload: dict, path: str, optimizers: list[str]) -> dict:
  """--merge: the runs in `path` (an earlier results.json of the same settings) join this comparison.

  The reported runs of the optimizers not in `optimizers` (those run now) are kept as
  they are, with their sweep runs and choices; the others, and every sweep run, are
  returned by run_key for reuse: a run this invocation would train again is taken from
  there instead, so a stopped comparison restarted with the same command and --merge
  continues where it stopped, and a finished run's record is never trained over.
  """
  with open(path) as f:
    previous = json.load(f)
  for key in SHARED_SETTINGS + ("label_noise_levels",):
    if previous.get(key, DEFAULT_PAYLOAD.get(key)) != payload.get(key, DEFAULT_PAYLOAD.get(key)):
      raise SystemExit(
        f"--merge: {path} has {key}={previous.get(key)!r}, this run {payload.get(key)!r}; merge only runs of the"
        " same settings."
      )
  kept = [r for r in previous["runs"] if r["optimizer"] not in optimizers]
  reusable = {r["run_key"]: r for r in previous["runs"] if r["optimizer"] in optimizers and "run_key" in r}
  names = set(payload["optimizers"]) | {r["optimizer"] for r in kept}
  payload["optimizers"] = [n for n in OPTIMIZERS if n in names]
  payload["runs"] = kept
  payload["commands"] = previous.get("commands", [previous["command"]]) + payload["commands"]
  payload["merged_runs"] = {
    "optimizers": [n for n in previous["optimizers"] if n in {r["optimizer"] for r in kept}],
    "environment": previous["environment"],
    "load_average_start": previous["load_average_start"],
    "load_average_end": previous.get("load_average_end"),
    "total_seconds": previous.get("total_seconds"),
  }
  sweep, earlier = payload.get("sweep"), previous.get("sweep")
  if sweep and earlier and "tuned" in earlier:
    for r in earlier["runs"]:
      if r["optimizer"] in sweep["tuned"] and "run_key" in r:
        reusable[r["run_key"]] = r
      else:
        sweep["runs"].append(r)
    for level, chosen in earlier["chosen"].items():
      for name, choice in chosen.items():
        if name not in sweep["tuned"]:
          sweep["chosen"].setdefault(level, {})[name] = choice
    for name, grid in earlier["grid"].items():
      sweep["grid"].setdefault(name, grid)
  # Saved with every results.json until reused, so no finished run is lost (one this command no longer makes stays).
  payload["earlier_runs_not_reused"] = reusable
  return reusable


def combine(parts: list[dict]) -> dict:
  """One comparison's payload from the results.json of its parts (parallel processes, same settings).

  A run both parts made (the same run_key: a base's sweep that each part ran for its
  variants) is reported once; the copies are kept under "duplicate_runs" with whether
  their accuracies are identical (training is deterministic). Choices of the same
  optimizer and noise level that differ between parts are listed under "chosen_conflicts".
  """
  first = parts[0]
  for part in parts[1:]:
    for key in SHARED_SETTINGS:
      if part.get(key) != first.get(key):
        raise SystemExit(f"parts differ in {key}: {first.get(key)!r} vs {part.get(key)!r}")
  seen, duplicates = {}, []
  runs, sweep_runs = [], []
  for part in parts:
    for records, out in ((part["runs"], runs), (((part.get("sweep") or {}).get("runs")) or [], sweep_runs)):
      for r in records:
        key = r.get("run_key") or json.dumps([r["optimizer"], r["seed"], noise_of(r), r.get("learning_rate")])
        if key in seen:
          same = all(r.get(k) == seen[key].get(k) for k in ("final_eval_accuracy", "best_eval_accuracy"))
          duplicates.append({**r, "same_accuracy_as_reported": same})
        else:
          seen[key] = r
          out.append(r)
  sweeps = [p["sweep"] for p in parts if p.get("sweep")]
  sweep, conflicts = None, []
  if sweeps:
    sweep = {**{k: v for k, v in sweeps[0].items() if k not in ("runs", "chosen", "grid", "tuned")}}
    sweep.update(runs=sweep_runs, chosen={}, grid={}, tuned=[])
    for s in sweeps:
      sweep["tuned"] += [n for n in s["tuned"] if n not in sweep["tuned"]]
      sweep["grid"].update(s["grid"])
      for level, chosen in s["chosen"].items():
        for name, choice in chosen.items():
          earlier = sweep["chosen"].setdefault(level, {}).setdefault(name, choice)
          if earlier != choice:
            conflicts.append({"label_noise": level, "optimizer": name, "kept": earlier, "other": choice})
  names = {r["optimizer"] for r in runs}
  return {
    **{k: first.get(k) for k in ("config", "config_name", "sharpness_num_iters") + SHARED_SETTINGS},
    "command": [c for p in parts for c in p.get("commands", [p["command"]])],
    "label_noise_levels": sorted({noise_of(r) for r in runs}),
    "optimizers": [n for n in OPTIMIZERS if n in names],
    "sweep": sweep,
    "chosen_conflicts": conflicts,
    "environment": first["environment"],
    "load_average_start": first["load_average_start"],
    "load_average_end": first.get("load_average_end"),
    "parts": [
      {
        k: p.get(k)
        for k in (
          "commands",
          "optimizers",
          "label_noise_levels",
          "environment",
          "load_average_start",
          "load_average_end",
          "total_seconds",
          "estimate",
        )
      }
      for p in parts
    ],
    "runs": runs,
    "duplicate_runs": duplicates,
  }


# ----------------------------------------------------------------------------- sweep


def tuned_optimizers(optimizers: list[str]) -> list[str]:
  """The optimizers to sweep, bases first: `optimizers` and the bases their rho sweeps start from."""
  names = set(optimizers) | {BASE_OPTIMIZER[n] for n in optimizers if n in USES_RHO}
  return sorted(names, key=lambda n: (BASE_OPTIMIZER[n] != n, OPTIMIZERS.index(n)))


def lr_grid(args, centre_lr: float) -> list[float]:
  """The learning rates swept: `--lr_factors` times the optimizer's centre (its base's: SGD's is the config's)."""
  return [centre_lr * f for f in args.lr_factors]


def rho_grid(name: str, args) -> list[float]:
  """The rho values `name` sweeps ([] when it takes none): its family's grid, MSAM's lower around AdamW and Lion."""
  if name not in USES_RHO:
    return []
  if registry.get(registry_name(name)).family == "msam":
    return args.msam_rho_grid if BASE_OPTIMIZER[name] == "sgd" else args.msam_rho_grid_adamw_lion
  return args.sam_rho_grid


def choose(records: list[dict], criterion: str) -> dict:
  """The swept point best on the validation split by `criterion` (CRITERIA), with its score.

  The highest validation accuracy (final, or the best over training), ties to the lower
  validation loss (final, or at that best evaluation), then to the earlier point; the test
  split plays no part.
  """
  accuracy, loss, _ = CRITERION_KEYS[criterion]
  best = max(enumerate(records), key=lambda ir: (ir[1][accuracy], -ir[1][loss], -ir[0]))[1]
  return {**best["point"], "validation_accuracy": best[accuracy], "validation_loss": best[loss]}


def _same(a: float, b: float | None) -> bool:
  return b is not None and math.isclose(a, b, rel_tol=1e-9)


def tune(lrs: list[float], rhos: list[float], run, start_lr: float | None = None) -> dict:
  """One optimizer's staged sweep at one noise level: {criterion: chosen point} for each of CRITERIA.

  `run(point, stage)` trains at `point` ({"learning_rate"[, "rho"]}) and returns its record.
  Without a rho (a base, sgd+mesa): (a) the learning rate over `lrs`. With one: (b) rho over
  `rhos` at `start_lr` (its base's early-stopped choice), then (c) the rest of `lrs` at the
  rho each criterion chose in (b), once when both chose the same. Each criterion then takes
  the best of all these runs.
  """
  if not rhos:
    records = [run({"learning_rate": lr}, "a: learning rate") for lr in lrs]
  else:
    records = [run({"learning_rate": start_lr, "rho": rho}, "b: rho") for rho in rhos]
    for rho in dict.fromkeys(choose(records, c)["rho"] for c in CRITERIA):
      records += [
        run({"learning_rate": lr, "rho": rho}, "c: learning rate at the chosen rho")
        for lr in lrs
        if not _same(lr, start_lr)
      ]
  return {c: choose(records, c) for c in CRITERIA}


def reported_points(chosen: dict) -> list[tuple[dict, list[str]]]:
  """The distinct points of an optimizer's choices ({criterion: point}), each with the columns it serves."""
  points = {}
  for c in CRITERIA:
    point = {k: chosen[c][k] for k in ("learning_rate", "rho") if k in chosen[c]}
    points.setdefault(json.dumps(point, sort_keys=True), (point, []))[1].append(c)
  return list(points.values())


# Seconds of one run of configs/digits.py (30 epochs, evaluated every epoch, label noise 0.4,
# no sharpness probes; setup included, compilation cache warm) on the project's 2-core CPU
# under a load average of 5-8 (the other engineers' jobs), from `--no_sweep --epochs 30
# --seeds 0 --label_noise 0.4` runs: sgd 14.6 s warm (28.0 s cold); sam 32.8 s, looksam
# 49.4 s and sgd+mesa 43.5 s cold, less the ~10 s a first compilation took for sgd. The
# others by their time per step in the noisy-label comparison: MSAM's, AdamW's and Lion's
# step costs about SGD's, every SAM-family step (late SAM's included, until its rho-0 steps
# take one gradient) about SAM's, rst's LookSAM's. At a load average of 9-11 sgd took 30-45 s.
RUN_SECONDS = {"sgd": 15.0, "sam": 24.0, "looksam": 40.0, "sgd+mesa": 33.0}
# The sharpness probes at the end of a reported run, compilation cache warm: 7.4 s in the same
# measurement, half an SGD run; the protocol leaves them out (--no_sharpness).
PROBE_SECONDS = 7.5
COSTS_LIKE = {"looksam": "looksam", "rst": "looksam", "sgd+mesa": "sgd+mesa"}


def estimated_seconds(name: str, epochs: float) -> float:
  """A rough wall time of one run of `name` for `epochs` epochs (RUN_SECONDS, scaled)."""
  like = COSTS_LIKE.get(name) or ("sam" if registry.get(registry_name(name)).family == "sam" else "sgd")
  return RUN_SECONDS[like] * epochs / 30


def planned_runs(args, tuned: list[str], epochs: float) -> list[tuple[str, float, bool]]:
  """Every run the comparison would make, in order: (what, estimated seconds, certain).

  Not certain: the runs made only when the two criteria choose differently (a second
  stage-(c) sweep; a second set of reported runs at the early-stopped choice).
  """
  plan = []
  for noise in args.label_noise:
    at = f"noise {noise:g}"
    for name in tuned:
      seconds = estimated_seconds(name, epochs)
      centre = args.lr.get(name, args.config_lr) if BASE_OPTIMIZER[name] == "sgd" else args.lr.get(name)
      lrs = lr_grid(args, centre if centre is not None else args.config_lr)
      rhos = rho_grid(name, args)
      sweep = f"{at} sweep seed {args.sweep_seed}: {name}"
      if not rhos:
        plan += [(f"{sweep} (a) lr {lr:g}", seconds, True) for lr in lrs]
        continue
      base = BASE_OPTIMIZER[name]
      plan += [(f"{sweep} (b) rho {rho:g} at {base}'s early-stopped lr", seconds, True) for rho in rhos]
      others = f"of {'/'.join(f'{lr:g}' for lr in lrs)} other than {base}'s early-stopped lr"
      for i in range(len(lrs) - 1):
        plan.append((f"{sweep} (c) lr {i + 1} {others}, at the early-stopped rho", seconds, True))
      for i in range(len(lrs) - 1):
        plan.append((f"{sweep} (c) lr {i + 1} {others}, at the final rho if it differs", seconds, False))
    for seed in args.seeds:
      for name in args.optimizers:
        seconds = estimated_seconds(name, epochs) + (0 if args.no_sharpness else PROBE_SECONDS)
        if args.no_sweep:
          plan.append((f"{at} seed {seed}: {name} (both columns)", seconds, True))
        else:
          plan.append((f"{at} seed {seed}: {name} at its final choice (and early-stopped, if the same)", seconds, True))
          plan.append((f"{at} seed {seed}: {name} at its early-stopped choice, if it differs", seconds, False))
  return plan


def estimate(plan: list[tuple[str, float, bool]]) -> dict:
  certain = [s for _, s, c in plan if c]
  return {
    "runs_min": len(certain),
    "runs_max": len(plan),
    "minutes_min": sum(certain) / 60,
    "minutes_max": sum(s for _, s, _ in plan) / 60,
  }


def print_plan(plan: list[tuple[str, float, bool]]) -> None:
  for index, (what, seconds, certain) in enumerate(plan, 1):
    print(f"{index:4d}. {what}  (~{seconds:.0f} s{'' if certain else ', only if the choices differ'})")
  e = estimate(plan)
  print(
    f"{e['runs_min']} runs if every pair of choices agrees, {e['runs_max']} if all differ; about"
    f" {e['minutes_min']:.0f}-{e['minutes_max']:.0f} minutes of one process (RUN_SECONDS: measured on the"
    " project's 2-core CPU under a load average of 5-8)",
    flush=True,
  )


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file defining get_config()")
  parser.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS))
  parser.add_argument("--seeds", default=DEFAULT_SEEDS)
  parser.add_argument("--label_noise", default=DEFAULT_LABEL_NOISE, help="noise levels in [0, 1), e.g. 0,0.2,0.4")
  parser.add_argument("--label_noise_seed", type=int, default=0, help="which examples are corrupted (all runs)")
  parser.add_argument(
    "--validation_fraction", type=float, default=0.1, help="of the training split, held out for the sweep"
  )
  parser.add_argument("--no_sweep", action="store_true", help="use --rho / --lr as given, choose nothing")
  parser.add_argument("--sweep_seed", type=int, default=SWEEP_SEED, help="the sweep's seed (never reported)")
  parser.add_argument("--msam_rho_grid", default=DEFAULT_MSAM_RHO_GRID, help="msam's rho grid")
  parser.add_argument(
    "--msam_rho_grid_adamw_lion", default=DEFAULT_MSAM_RHO_GRID_ADAMW_LION, help="adamw_msam's and lion_msam's"
  )
  parser.add_argument("--sam_rho_grid", default=DEFAULT_SAM_RHO_GRID, help="the SAM family's (sam_late's too)")
  parser.add_argument(
    "--lr_factors", default=DEFAULT_LR_FACTORS, help="the learning rates swept: these times each base's centre"
  )
  parser.add_argument("--epochs", type=int, default=None, help="overrides the config's num_epochs")
  parser.add_argument("--steps", type=int, default=None, help="overrides the number of steps (quick checks)")
  parser.add_argument(
    "--eval_every_epochs",
    type=int,
    default=1,
    help="evaluate (test, validation, noisy train) every N epochs: the early-stopped model is the best of these",
  )
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--rho", default=DEFAULT_RHO, help="per optimizer, e.g. msam=0.3,sam=0.05 (with --no_sweep)")
  parser.add_argument("--lr", default=DEFAULT_LR, help="per-optimizer learning rate (the sweep's centre)")
  parser.add_argument("--weight_decay", default=DEFAULT_WEIGHT_DECAY, help="per-optimizer weight decay")
  parser.add_argument(
    "--no_sharpness",
    action="store_true",
    help="skip the sharpness probes of the reported runs (the sweep never probes)",
  )
  parser.add_argument(
    "--compilation_cache",
    default=os.path.join(tempfile.gettempdir(), "msam_jax_compare_cache"),
    help="JAX's persistent compilation cache: runs that differ only in seed or label noise compile"
    " the same programs, so later runs load them ('' to compile every run afresh)",
  )
  parser.add_argument("--dpi", type=int, default=80)
  parser.add_argument(
    "--merge",
    action="store_true",
    help="continue OUT/results.json (same settings): its finished runs are reused, not trained again,"
    " and its other optimizers' runs reported beside this invocation's",
  )
  parser.add_argument(
    "--report_only", action="store_true", help="train nothing: rewrite the table and plots from OUT/results.json"
  )
  parser.add_argument(
    "--dry_run", action="store_true", help="train nothing: list every run this command would make, and its cost"
  )
  args = parser.parse_args(argv)
  try:
    args.optimizers = parse_list(args.optimizers, "--optimizers", OPTIMIZERS)
    args.seeds = parse_seeds(args.seeds)
    args.label_noise = parse_numbers(args.label_noise, "--label_noise", low=0.0, high=1.0)
    args.msam_rho_grid = parse_numbers(args.msam_rho_grid, "--msam_rho_grid", low=0.0, low_open=True)
    args.msam_rho_grid_adamw_lion = parse_numbers(
      args.msam_rho_grid_adamw_lion, "--msam_rho_grid_adamw_lion", low=0.0, low_open=True
    )
    args.sam_rho_grid = parse_numbers(args.sam_rho_grid, "--sam_rho_grid", low=0.0, low_open=True)
    args.lr_factors = parse_numbers(args.lr_factors, "--lr_factors", low=0.0, low_open=True)
    if not 0 <= args.validation_fraction < 1:
      raise ValueError(f"--validation_fraction={args.validation_fraction:g} must be in [0, 1).")
    if args.label_noise_seed < 0:
      raise ValueError(f"--label_noise_seed={args.label_noise_seed} must be a non-negative integer.")
    if not args.no_sweep and not args.report_only:
      if args.validation_fraction == 0:
        raise ValueError("the sweep scores on the validation split: give --validation_fraction > 0 or --no_sweep.")
      if args.sweep_seed in args.seeds:
        raise ValueError(f"--sweep_seed={args.sweep_seed} is one of --seeds; the sweep's seed is never reported.")
    args.rho = parse_overrides(args.rho, "--rho")
    args.lr = parse_overrides(args.lr, "--lr")
    args.weight_decay = parse_overrides(args.weight_decay, "--weight_decay")
    for flag in ("epochs", "steps", "eval_every_epochs"):
      if getattr(args, flag) is not None and getattr(args, flag) < 1:
        raise ValueError(f"--{flag}={getattr(args, flag)} must be a positive integer.")
    if args.merge and args.report_only:
      raise ValueError("--merge trains: give --merge or --report_only, not both.")
    args.config_module = load_config_module(args.config)
    args.config_lr = args.config_module.get_config().learning_rate
  except ValueError as e:
    parser.error(str(e))
  return args


def check_best_model(config) -> None:
  """ValueError unless the training loop keeps the best-on-validation model (the early-stopped column)."""
  if BEST_MODEL_FIELD not in config:
    raise ValueError(
      f"this checkout's training loop has no config.{BEST_MODEL_FIELD} (the best-on-validation model of"
      " issue 28), which the early-stopped column reads; update msam_jax (check PYTHONPATH) or run an older"
      " version of this script."
    )


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  results_path = os.path.join(args.out, "results.json")
  if args.report_only:
    with open(results_path) as f:
      payload = json.load(f)
    write_report(args.out, payload, args.dpi)
    print(open(os.path.join(args.out, "table.md")).read())
    return payload

  def config_of(name, seed, noise, point=None, sharpness=False):
    """A reported run's config (`point`: its learning rate and rho), or a sweep run's (at args.sweep_seed)."""
    point = point or {}
    return run_config(
      args.config_module,
      name,
      seed,
      epochs=args.epochs,
      steps=args.steps,
      rho=point.get("rho", args.rho.get(name)),
      learning_rate=point.get("learning_rate", args.lr.get(name)),
      weight_decay=args.weight_decay.get(name),
      sharpness=sharpness,
      label_noise=noise,
      label_noise_seed=args.label_noise_seed,
      validation_fraction=args.validation_fraction,
      eval_every_epochs=args.eval_every_epochs,
    )

  tuned = [] if args.no_sweep else tuned_optimizers(args.optimizers)
  first = config_of(args.optimizers[0], args.seeds[0], args.label_noise[0])
  epochs = first.num_train_steps / _steps_per_epoch(first) if first.num_train_steps > 0 else first.num_epochs
  plan = planned_runs(args, tuned, epochs)
  if args.dry_run:
    print_plan(plan)
    return None
  if os.path.exists(results_path) and not args.merge:
    raise SystemExit(
      f"{results_path} exists: pass --merge to continue it (its finished runs are kept) or choose another --out."
    )
  import jax
  from msam_jax.training import mesh as mesh_lib, validate

  mesh = mesh_lib.create_mesh(jax.devices()[:1])  # one device: times comparable across machines
  # A bad override or grid point fails now, not after an hour of runs.
  grid = {}
  try:
    check_best_model(first)
    for name in tuned:
      grid[name] = {"learning_rate": lr_grid(args, config_of(name, args.sweep_seed, 0.0).learning_rate)}
      grid[name]["rho"] = rho_grid(name, args)
      for lr in grid[name]["learning_rate"]:
        for rho in grid[name]["rho"] or [None]:
          point = {"learning_rate": lr, **({"rho": rho} if rho is not None else {})}
          validate(config_of(name, args.sweep_seed, args.label_noise[0], point), num_devices=mesh.size)
    for name in args.optimizers:
      validate(
        config_of(name, args.seeds[0], args.label_noise[0], sharpness=not args.no_sharpness), num_devices=mesh.size
      )
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  os.makedirs(args.out, exist_ok=True)
  command = "python benchmarks/compare_optimizers.py " + " ".join(argv if argv is not None else sys.argv[1:])
  payload = {
    "command": command,
    "commands": [command],
    "config": os.path.relpath(os.path.abspath(args.config), os.getcwd()),
    "config_name": os.path.basename(args.config),
    "optimizers": args.optimizers,
    "seeds": args.seeds,
    "label_noise_levels": args.label_noise,
    "label_noise_seed": args.label_noise_seed,
    "validation_fraction": args.validation_fraction,
    "epochs": epochs,
    "eval_every_epochs": args.eval_every_epochs,
    "sharpness_rho": None if args.no_sharpness else first.sharpness_rho,
    "sharpness_num_iters": first.sharpness_num_iters,
    "overrides": {"rho": args.rho, "learning_rate": args.lr, "weight_decay": args.weight_decay},
    "sweep": None
    if args.no_sweep
    else {
      "seed": args.sweep_seed,
      "criteria": list(CRITERIA),
      "lr_factors": args.lr_factors,
      "msam_rho_grid": args.msam_rho_grid,
      "msam_rho_grid_adamw_lion": args.msam_rho_grid_adamw_lion,
      "sam_rho_grid": args.sam_rho_grid,
      "tuned": tuned,
      "grid": grid,
      "runs": [],
      "chosen": {},
    },
    "estimate": estimate(plan),
    "environment": {**environment(), "niceness": os.nice(0)},
    "load_average_start": os.getloadavg(),
    "runs": [],
  }
  reusable = merge_previous(payload, results_path, args.optimizers) if args.merge else {}
  e = payload["estimate"]
  print(
    f"{e['runs_min']}-{e['runs_max']} runs (--dry_run lists them), about {e['minutes_min']:.0f}-"
    f"{e['minutes_max']:.0f} minutes; {payload['epochs']:g} epochs each, on {payload['environment']['device']};"
    f" writing {args.out}",
    flush=True,
  )
  start = time.time()
  done = [0]

  def obtain(config, records: list, what: str, **extra) -> dict:
    """The run of `config`: reused from --merge's results.json if there, else trained; saved at once."""
    key = run_key(config)
    record = reusable.pop(key, None)
    if record is None:
      print(f"[{what}] {key}: training...", flush=True)
      record = train_one(config, mesh)
      done[0] += 1
    else:
      print(f"[{what}] {key}: finished earlier, reused", flush=True)
    record.update(extra)
    records.append(record)
    write_json(results_path, payload)  # partial results survive a crash; --merge continues them
    print_run(record)
    print(f"  {done[0]} runs trained in {(time.time() - start) / 60:.1f} min", flush=True)
    return record

  for noise in args.label_noise:
    level = level_key(noise)
    chosen = payload["sweep"]["chosen"].setdefault(level, {}) if tuned else {}
    for name in tuned:

      def run(point, stage, name=name, noise=noise):
        config = config_of(name, args.sweep_seed, noise, point)
        return obtain(
          config, payload["sweep"]["runs"], f"sweep, noise {noise:g}, {name}, {stage}", point=point, stage=stage
        )

      start_lr = chosen[BASE_OPTIMIZER[name]]["early_stopped"]["learning_rate"] if rho_grid(name, args) else None
      chosen[name] = tune(grid[name]["learning_rate"], grid[name]["rho"], run, start_lr)
      print(f"  noise {noise:g}, {name} chose: {chosen[name]}", flush=True)
    for seed in args.seeds:
      for name in args.optimizers:
        for point, columns in reported_points(chosen.get(name) or {c: {} for c in CRITERIA}):
          config = config_of(name, seed, noise, point, sharpness=not args.no_sharpness)
          obtain(config, payload["runs"], f"noise {noise:g}, seed {seed}, {'/'.join(columns)}", chosen_by=columns)
  payload["load_average_end"] = os.getloadavg()
  payload["total_seconds"] = time.time() - start
  write_report(args.out, payload, args.dpi)
  print()
  print(open(os.path.join(args.out, "table.md")).read())
  return payload


if __name__ == "__main__":
  main()
