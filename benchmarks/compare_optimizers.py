"""Trains one config with several optimizers, label-noise levels and seeds; tables and plots the outcome.

    python benchmarks/compare_optimizers.py [--config configs/digits.py]
        [--optimizers sgd,msam,sam,...] [--seeds 0,1,2,3,4] [--label_noise 0,0.2,0.4]
        [--validation_fraction 0.1] [--no_sweep | --sweep_seed 100 --sweep_noise 0.2
        --msam_rho_grid 0.3,1,3,10 --sam_rho_grid 0.01,0.03,0.1,0.3,1 --lr_factors 0.3,1,3]
        [--epochs N] [--steps N] [--eval_every_epochs 1] [--out benchmarks/results/compare_digits]
        [--rho msam=1,sam=0.1,...] [--lr adamw=3e-3,...] [--weight_decay adamw=0.05,...]
        [--no_sharpness] [--report_only] [--dpi 80]

Each run calls `msam_jax.training.train_and_evaluate` in this process, in a
fresh temporary workdir, on one device, evaluating every epoch and probing
sharpness (SAM sharpness and top Hessian eigenvalue, at the unperturbed
parameters on a fixed training batch) once at the end. Runs go noise level by
noise level and seed by seed, every optimizer in turn, so the optimizers of one
seed share the machine load they were timed under; the time ratio to the base
optimizer (SGD for the SGD-based family, AdamW for the AdamW family) is taken
within a seed.

Label noise (`config.label_noise`, msam_jax/data/label_noise.py) corrupts the
same training examples in every run of a level (`--label_noise_seed`, not the
training seed), so each optimizer's run is paired with its base's run of the
same seed: the table gives the mean paired difference in clean test accuracy
with a 95 % t-interval over seeds. `--validation_fraction` holds out a fixed,
stratified part of the training split (clean labels); each run reports its
accuracy beside the test accuracy, and the accuracy on the training split
against its noisy labels (memorisation).

Hyper-parameters are chosen on the validation split, never the test split:
unless `--no_sweep`, every optimizer that takes a rho first trains at seed
`--sweep_seed` (not reported) over a log grid of rho (the MSAM family's
`--msam_rho_grid`, the SAM family's `--sam_rho_grid`: MSAM's rho is an order of
magnitude larger), and the optimizers whose base is not SGD also over
`--lr_factors` times their learning rate; the point with the best final
validation accuracy (ties: lower validation loss) is used for every reported
run and written into results.json and the table notes. The sweep runs at one
noise level, `--sweep_noise` (default: the middle of `--label_noise`).

MESA is compared as `sgd+mesa`: SGD with the MESA loss term on
(`config.mesa_weight`, MESA_FIELDS: the SAF code's lambda 0.3, temperature 5
and start epoch 6, with the EMA decay scaled to a time constant of one epoch),
so its paired difference and time ratio are against `sgd`; it has no rho to
sweep. The Lion family's learning rate centres at 3e-4, a tenth of AdamW's
(BASE_LEARNING_RATE), and is swept like AdamW's.

Time per step is the median over epochs of (epoch wall time / steps), leaving
out the first epoch (compilation) and the last (final probes, checkpoint); it
includes the per-epoch evaluation of the 360 test digits, which costs every
optimizer the same. The loop's own `seconds_per_step_excluding_compilation`
is kept in the JSON too.

The `--rho`, `--lr` and `--weight_decay` defaults are chosen for
`configs/digits.py` (see DEFAULT_* below); for another config pass your own, or
an empty string to keep the config's values.

Writes into `--out`: `table.md` (mean +- std over seeds, one table per noise
level), `results.json` (every run and sweep run, written after each one),
`accuracy_vs_noise.png` (clean test and noisy-train accuracy against the noise
level, seed spread), and per noise level `accuracy_vs_epoch.png`,
`accuracy_vs_time.png` and `sharpness.png` (with a `_noise<p>` suffix when there
are several levels), one colour per optimizer throughout. A crashed or stopped
comparison keeps its finished runs in results.json; `--report_only` redraws
everything from it.
"""

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from msam_jax.optim import registry

# MESA is a loss term, not an optimizer: "<optimizer>+mesa" runs the registered
# optimizer with config.mesa_weight > 0 (MESA_FIELDS), and its base is that optimizer.
MESA_SUFFIX = "+mesa"
MESA_OPTIMIZERS = ("sgd" + MESA_SUFFIX,)
OPTIMIZERS = registry.names() + MESA_OPTIMIZERS


def registry_name(name: str) -> str:
  """The registered optimizer a comparison entry trains with: 'sgd+mesa' -> 'sgd'."""
  return name.removesuffix(MESA_SUFFIX)


def comparison_name(config) -> str:
  """The comparison's name of a run's config: its optimizer, with '+mesa' when MESA is on."""
  return config.optimizer + (MESA_SUFFIX if config.get("mesa_weight", 0.0) else "")


# The committed comparison's set: every optimizer but adamw_sam.
DEFAULT_OPTIMIZERS = tuple(name for name in OPTIMIZERS if name != "adamw_sam")
# The time ratio and the paired difference of each entry are taken to its base's
# (sgd, adamw or lion; an "<optimizer>+mesa" entry's base is that optimizer).
BASE_OPTIMIZER = {
  name: registry_name(name) if name.endswith(MESA_SUFFIX) else registry.get(name).base for name in OPTIMIZERS
}
# Optimizers that take a rho (the others ignore config.rho).
USES_RHO = tuple(name for name in registry.names() if registry.get(name).uses_rho)
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
)
COLORS = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(OPTIMIZERS)}

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "digits.py")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compare_digits")
# Chosen for configs/digits.py by a small sweep (see benchmarks/results/compare_digits/README.md).
# MSAM's rho is a distance along the normalised momentum in parameter space (the
# digits CNN's parameter norm is about 19); SAM's is the usual gradient-ascent radius.
_FAMILY_RHO = {"msam": 0.3, "sam": 0.05}
# ASAM's rho is relative to |w| (SamsungLabs/ASAM uses 10 x SAM's: 0.5 vs 0.05 on CIFAR);
# GSAM's is its rho_max, falling with the learning rate to gsam_rho_min (DEFAULT_FIELDS).
_RHO = {"asam": 0.5, "adamw_asam": 0.5, "gsam": 0.1, "adamw_gsam": 0.1}
DEFAULT_RHO = ",".join(
  f"{name}={_RHO.get(name, _FAMILY_RHO[registry.get(name).family]):g}" for name in OPTIMIZERS if name in USES_RHO
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
# Sweep grids (log spaced): each family's rho scale (the original's commands: MSAM rho 3, SAM 0.2).
DEFAULT_MSAM_RHO_GRID = "0.3,1,3,10"
DEFAULT_SAM_RHO_GRID = "0.01,0.03,0.1,0.3,1"
DEFAULT_LR_FACTORS = "0.3,1,3"  # times the centre learning rate, for optimizers whose base is not SGD
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
  from msam_jax.training import set_optimizer  # noqa: PLC0415 (config helpers only: no jax backend)

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
  record = {
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


def print_run(index: int, total: int, record: dict) -> None:
  name = f"{record['optimizer']} seed {record['seed']} noise {record.get('label_noise', 0):g}"
  for e in record["eval_history"]:
    extra = "".join(
      f"  {label} acc {100 * e[key]:.2f}%"
      for key, label in (("validation_accuracy", "val"), ("noisy_train_accuracy", "noisy-train"))
      if key in e
    )
    print(
      f"  [{index}/{total}] {name}  epoch {e['epoch']:g}/{record['epochs']:g}  "
      f"test acc {100 * e['accuracy']:.2f}%  test loss {e['loss']:.4f}{extra}  ({e['training_seconds']:.1f} s)"
    )
  probes = (
    f"sam sharpness {record['final_sam_sharpness']:.4g}, hessian max eig {record['final_hessian_max_eigenvalue']:.4g}"
    if "final_sam_sharpness" in record
    else "no sharpness probes"
  )
  print(
    f"  [{index}/{total}] {name} done: test acc {100 * record['final_eval_accuracy']:.2f}%, "
    f"train loss {record['final_train_loss']:.4f}, {probes}, "
    f"{1000 * record['seconds_per_step']:.1f} ms/step, {record['training_seconds']:.1f} s training "
    f"({record['train_seconds']:.1f} s with the final probes, {record['wall_seconds_including_setup']:.1f} s "
    "with setup)",
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


def add_time_ratios(runs: list[dict]) -> None:
  """Sets each run's `time_per_step_vs_base`: its time per step over its base's in the same seed and noise level.

  None when the base optimizer was not run with that seed.
  """
  step_time = {(r["optimizer"], r["seed"], noise_of(r)): r["seconds_per_step"] for r in runs}
  for r in runs:
    base = step_time.get((BASE_OPTIMIZER[r["optimizer"]], r["seed"], noise_of(r)))
    r["time_per_step_vs_base"] = r["seconds_per_step"] / base if base else None


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


def markdown_table(summary: dict, runs: list[dict], paired: dict | None = None) -> str:
  """The README table: one row per optimizer, mean ± std over its seeds.

  `paired`: this level's `paired_differences` (test accuracy minus the base's, same seed).
  """
  header = (
    "| optimizer | rho | test accuracy (%) | vs base: Δ test accuracy (pp, 95 % CI) | validation accuracy (%) | "
    "noisy-train accuracy (%) | final train loss | SAM sharpness | "
    "Hessian max eigenvalue | training time (s) | time per step (ms) | time per step vs base |"
  )
  num_columns = header.count("|") - 1
  lines = [header, "|---|" + "---:|" * (num_columns - 1)]
  for name, stats in summary.items():
    rhos = sorted({r["rho"] for r in runs if r["optimizer"] == name and r["rho"] is not None})
    base = BASE_OPTIMIZER[name]
    ratio = (
      "1 (base)"
      if base == name
      else (
        f"{_cell(stats['time_per_step_vs_base'], '.2f')} × {base}"
        if stats["time_per_step_vs_base"]["mean"] is not None
        else f"n/a ({base} not run)"
      )
    )
    lines.append(
      "| "
      + " | ".join(
        [
          name,
          ", ".join(f"{v:g}" for v in rhos) or "–",
          _cell(stats["final_eval_accuracy"], ".2f", 100),
          _difference_cell(paired, name),
          _cell(stats.get("final_validation_accuracy"), ".2f", 100),
          _cell(stats.get("final_noisy_train_accuracy"), ".2f", 100),
          _cell(stats["final_train_loss"], ".4f"),
          _cell(stats["final_sam_sharpness"], ".4f"),
          _cell(stats["final_hessian_max_eigenvalue"], ".2f"),
          _cell(stats["training_seconds"], ".1f"),
          _cell(stats["seconds_per_step"], ".1f", 1000),
          ratio,
        ]
      )
      + " |"
    )
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
  """Clean test accuracy (left) and noisy-train accuracy (right) against the noise level.

  One line per optimizer through the means over seeds, error bars ± std, dots the seeds
  (offset a little sideways so that the optimizers stay apart).
  """
  figure = _new_figure(10, 4)
  panels = (
    ("final_eval_accuracy", "clean test accuracy (%)"),
    ("final_noisy_train_accuracy", "accuracy on the noisy training labels (%)"),
  )
  levels = noise_levels(runs)
  span = (levels[-1] - levels[0]) or 1.0
  names = [n for n in optimizers if any(r["optimizer"] == n for r in runs)]
  for axes, (key, label) in zip(figure.subplots(1, 2), panels):
    for i, name in enumerate(names):
      shift = span * 0.012 * (i - (len(names) - 1) / 2)
      xs, means, stds = [], [], []
      for level in levels:
        values = [
          100 * r[key] for r in runs if r["optimizer"] == name and noise_of(r) == level and r.get(key) is not None
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
  figure.axes[0].set_title("clean test accuracy (mean ± std over seeds; dots: seeds)")
  figure.axes[1].set_title("memorisation")
  figure.axes[0].legend(fontsize=7, ncol=2)
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

  `summary` and `paired_vs_base` are keyed by noise level ("0", "0.2", ...), then optimizer.
  """
  runs, optimizers = payload["runs"], payload["optimizers"]
  add_time_ratios(runs)
  levels = noise_levels(runs)
  by_level = {level_key(level): [r for r in runs if noise_of(r) == level] for level in levels}
  payload["summary"] = {key: summarize(level_runs, optimizers) for key, level_runs in by_level.items()}
  payload["paired_vs_base"] = paired_differences(runs, optimizers)
  write_json(os.path.join(out, "results.json"), payload)
  sections = []
  for key, level_runs in by_level.items():
    table = markdown_table(payload["summary"][key], level_runs, payload["paired_vs_base"][key])
    sections.append(f"### Label noise {key}\n\n{table}" if len(levels) > 1 else table)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(sections) + "\n" + table_notes(payload) + "\n")
  if len(levels) > 1:
    plot_accuracy_vs_noise(runs, optimizers, os.path.join(out, "accuracy_vs_noise.png"), dpi)
  for key, level_runs in by_level.items():
    suffix = f"_noise{key}" if len(levels) > 1 else ""
    title = "test accuracy (mean over seeds)" + (f", label noise {key}" if len(levels) > 1 else "")
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
    plot_sharpness(
      level_runs, payload["summary"][key], payload["sharpness_rho"], os.path.join(out, f"sharpness{suffix}.png"), dpi
    )


def table_notes(payload: dict) -> str:
  """What the table's columns measure, and under which settings and machine load."""
  runs, env = payload["runs"], payload["environment"]
  settings = {}
  for r in runs:
    settings.setdefault((r["learning_rate"], r["weight_decay"]), []).append(r["optimizer"])
  hparams = "; ".join(f"{', '.join(dict.fromkeys(names))}: {lr:g} / {wd:g}" for (lr, wd), names in settings.items())
  other = {}  # the optimizer-specific config fields (DEFAULT_FIELDS), grouped like the learning rates
  for r in runs:
    if r.get("fields"):
      other.setdefault(tuple(sorted(r["fields"].items())), []).append(r["optimizer"])
  fields = "; ".join(
    f"{', '.join(dict.fromkeys(names))}: {', '.join(f'{k} {v:g}' for k, v in items)}" for items, names in other.items()
  )
  load = f"load average {payload['load_average_start'][0]:.1f} at the start"
  if "load_average_end" in payload:
    load += f", {payload['load_average_end'][0]:.1f} at the end"
  sharpness = (
    "not measured"
    if payload["sharpness_rho"] is None
    else f"at the end of training, at the unperturbed parameters, on one fixed training batch;"
    f" SAM sharpness = L(p + rho g/|g|) - L(p) with rho = {payload['sharpness_rho']:g}"
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
  return "\n".join(
    [
      f"{payload['config_name']}, {payload['epochs']:g} epochs, seeds "
      f"{', '.join(str(s) for s in payload['seeds'])}; mean ± sample std over seeds.",
      f"{noise} {validation}",
      sweep_notes(payload),
      "Δ test accuracy: mean over seeds of (test accuracy - the base optimizer's of the same seed and noise"
      " level), percentage points, with the 95 % Student-t interval over those seeds. Noisy-train accuracy:"
      " the training split (validation excluded) evaluated against the labels it trained with; at noise > 0,"
      " high values mean the corrupted labels were memorised.",
      f"Learning rate / weight decay: {hparams}." + (f" Other fields: {fields}." if fields else ""),
      "Test accuracy: final, on the whole test split. Final train loss: mean over the last epoch"
      " (MSAM family: at the perturbed parameters it trains at).",
      f"Sharpness: {sharpness}.",
      "Training time: wall clock from the start of training to the last step, compilation and"
      " per-epoch evaluation included, the final sharpness probes left out. Time per step: median"
      " over epochs of epoch time / steps, the first and last epoch left out; vs base: the ratio to"
      " the base optimizer's run of the same seed (run back to back), mean ± std over seeds.",
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
  """How each optimizer's rho (and learning rate) was chosen: the grid, the seed, the split."""
  sweep = payload.get("sweep")
  if not sweep:
    return "Hyper-parameters: fixed (--rho, --lr, --weight_decay), not swept in this comparison."
  chosen = "; ".join(
    f"{name}: "
    + ", ".join(f"{k} {v:g}" for k, v in point.items() if k in ("rho", "learning_rate"))
    + f" (validation accuracy {100 * point['validation_accuracy']:.2f} %)"
    for name, point in sweep["chosen"].items()
  )
  return (
    f"Hyper-parameters chosen on the validation split by a sweep at seed {sweep['seed']} (not reported),"
    f" label noise {sweep['label_noise']:g}: rho over {', '.join(f'{v:g}' for v in sweep['msam_rho_grid'])}"
    f" (MSAM family) or {', '.join(f'{v:g}' for v in sweep['sam_rho_grid'])} (SAM family), and for"
    f" optimizers whose base is not SGD the learning rate times {', '.join(f'{v:g}' for v in sweep['lr_factors'])};"
    f" best final validation accuracy, ties to the lower validation loss. Chosen: {chosen}."
  )


# What a results.json written before label noise and validation existed implies.
DEFAULT_PAYLOAD = {"label_noise_levels": [0.0], "validation_fraction": 0.0}


def merge_previous(payload: dict, path: str) -> None:
  """Puts the earlier runs at `path` of the optimizers not in `payload` into it.

  Their settings must match (config, seeds, epochs); the earlier environment and
  load are kept under "merged_runs" so the table notes can say so.
  """
  with open(path) as f:
    previous = json.load(f)
  for key in ("config_name", "seeds", "epochs", "sharpness_rho", "label_noise_levels", "validation_fraction"):
    if previous.get(key, DEFAULT_PAYLOAD.get(key)) != payload.get(key, DEFAULT_PAYLOAD.get(key)):
      raise SystemExit(
        f"--merge: {path} has {key}={previous.get(key)!r}, this run {payload.get(key)!r}; merge only runs of the"
        " same settings."
      )
  kept = [r for r in previous["runs"] if r["optimizer"] not in payload["optimizers"]]
  names = set(payload["optimizers"]) | {r["optimizer"] for r in kept}
  payload["optimizers"] = [n for n in OPTIMIZERS if n in names]
  payload["runs"] = kept
  payload["merged_runs"] = {
    "optimizers": [n for n in previous["optimizers"] if n in {r["optimizer"] for r in kept}],
    "environment": previous["environment"],
    "load_average_start": previous["load_average_start"],
    "load_average_end": previous.get("load_average_end"),
    "total_seconds": previous.get("total_seconds"),
    "sweep": previous.get("sweep"),
  }
  if payload.get("sweep") and previous.get("sweep"):  # the kept optimizers' choices, for the table notes
    kept_names = {r["optimizer"] for r in kept}
    for name, point in previous["sweep"]["chosen"].items():
      if name in kept_names:
        payload["sweep"]["chosen"].setdefault(name, point)


# ----------------------------------------------------------------------------- sweep


def sweep_grid(name: str, args, centre_lr: float) -> list[dict]:
  """The points {"rho", "learning_rate"} at which `name` is tried; one point means nothing to choose.

  rho over its family's grid where it takes one; the learning rate times each of
  `args.lr_factors` where its base is not SGD (the config's learning rate is SGD's).
  """
  entry = registry.get(registry_name(name))
  rhos = [None]
  if name in USES_RHO:
    rhos = args.msam_rho_grid if entry.family == "msam" else args.sam_rho_grid
  lrs = [None] if BASE_OPTIMIZER[name] == "sgd" else [centre_lr * f for f in args.lr_factors]
  return [{k: v for k, v in (("rho", r), ("learning_rate", lr)) if v is not None} for r in rhos for lr in lrs]


def best_point(records: list[dict]) -> dict:
  """The swept point with the best final validation accuracy (ties: lower validation loss, then the earlier)."""
  best = max(
    enumerate(records), key=lambda ir: (ir[1]["final_validation_accuracy"], -ir[1]["final_validation_loss"], -ir[0])
  )[1]
  return {
    **best["point"],
    "validation_accuracy": best["final_validation_accuracy"],
    "validation_loss": best["final_validation_loss"],
  }


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
  parser.add_argument("--sweep_noise", type=float, default=None, help="the sweep's noise level (default: the middle)")
  parser.add_argument("--msam_rho_grid", default=DEFAULT_MSAM_RHO_GRID)
  parser.add_argument("--sam_rho_grid", default=DEFAULT_SAM_RHO_GRID)
  parser.add_argument("--lr_factors", default=DEFAULT_LR_FACTORS, help="times --lr, for optimizers not based on SGD")
  parser.add_argument("--epochs", type=int, default=None, help="overrides the config's num_epochs")
  parser.add_argument("--steps", type=int, default=None, help="overrides the number of steps (quick checks)")
  parser.add_argument(
    "--eval_every_epochs",
    type=int,
    default=1,
    help="evaluate (test, validation, noisy train) every N epochs; the time per step needs three evaluations",
  )
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--rho", default=DEFAULT_RHO, help="per optimizer, e.g. msam=0.3,sam=0.05")
  parser.add_argument("--lr", default=DEFAULT_LR, help="per-optimizer learning rate")
  parser.add_argument("--weight_decay", default=DEFAULT_WEIGHT_DECAY, help="per-optimizer weight decay")
  parser.add_argument(
    "--no_sharpness",
    action="store_true",
    help="skip the sharpness probes (quick checks: their compilation dominates short runs)",
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
    help="keep OUT/results.json's runs of the optimizers not run now (same config,"
    " seeds and epochs) and report them all together",
  )
  parser.add_argument(
    "--report_only", action="store_true", help="train nothing: rewrite the table and plots from OUT/results.json"
  )
  args = parser.parse_args(argv)
  try:
    args.optimizers = parse_list(args.optimizers, "--optimizers", OPTIMIZERS)
    args.seeds = parse_seeds(args.seeds)
    args.label_noise = parse_numbers(args.label_noise, "--label_noise", low=0.0, high=1.0)
    args.msam_rho_grid = parse_numbers(args.msam_rho_grid, "--msam_rho_grid", low=0.0, low_open=True)
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
      if args.sweep_noise is None:
        args.sweep_noise = sorted(args.label_noise)[len(args.label_noise) // 2]
      if not 0 <= args.sweep_noise < 1:
        raise ValueError(f"--sweep_noise={args.sweep_noise:g} must be in [0, 1).")
    args.rho = parse_overrides(args.rho, "--rho")
    args.lr = parse_overrides(args.lr, "--lr")
    args.weight_decay = parse_overrides(args.weight_decay, "--weight_decay")
    for flag in ("epochs", "steps", "eval_every_epochs"):
      if getattr(args, flag) is not None and getattr(args, flag) < 1:
        raise ValueError(f"--{flag}={getattr(args, flag)} must be a positive integer.")
    args.config_module = load_config_module(args.config)
  except ValueError as e:
    parser.error(str(e))
  return args


def _run_all(configs: list, mesh, records: list, payload: dict, out: str, what: str) -> None:
  """Trains each config, appending its record to `records` and saving results.json after each."""
  start = time.time()
  for index, config in enumerate(configs, 1):
    name = comparison_name(config)
    hparams = f"lr={config.learning_rate:g}, wd={config.optimizer_kwargs.weight_decay:g}" + (
      f", rho={config.rho:g}" if name in USES_RHO else ""
    )
    print(
      f"[{what} {index}/{len(configs)}] {name} seed {config.seed} noise {config.label_noise:g}"
      f" ({hparams}): training...",
      flush=True,
    )
    record = train_one(config, mesh)
    records.append(record)
    write_json(os.path.join(out, "results.json"), payload)  # partial results survive a crash
    print_run(index, len(configs), record)
    elapsed = time.time() - start
    print(
      f"  {elapsed / 60:.1f} min so far, about {elapsed / index * (len(configs) - index) / 60:.1f} min "
      f"to go in the {what} (rough: SAM-family runs take longer)",
      flush=True,
    )


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.report_only:
    with open(os.path.join(args.out, "results.json")) as f:
      payload = json.load(f)
    write_report(args.out, payload, args.dpi)
    print(open(os.path.join(args.out, "table.md")).read())
    return payload
  import jax
  from msam_jax.training import mesh as mesh_lib, validate

  mesh = mesh_lib.create_mesh(jax.devices()[:1])  # one device: times comparable across machines
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  def config_of(name, seed, noise, point=None):
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
      sharpness=not args.no_sharpness,
      label_noise=noise,
      label_noise_seed=args.label_noise_seed,
      validation_fraction=args.validation_fraction,
      eval_every_epochs=args.eval_every_epochs,
    )

  grids = {}
  if not args.no_sweep:
    for name in args.optimizers:
      grid = sweep_grid(name, args, config_of(name, args.sweep_seed, args.sweep_noise).learning_rate)
      if len(grid) > 1:
        grids[name] = grid
  sweep_points = [(p, config_of(name, args.sweep_seed, args.sweep_noise, p)) for name, g in grids.items() for p in g]
  sweep_configs = [config for _, config in sweep_points]
  configs = [  # with the given values; the swept optimizers' are replaced after the sweep
    config_of(name, seed, noise) for noise in args.label_noise for seed in args.seeds for name in args.optimizers
  ]
  for config in sweep_configs + configs:  # a bad override fails now, not after an hour of runs
    validate(config, num_devices=mesh.size)
  os.makedirs(args.out, exist_ok=True)
  first = configs[0]
  payload = {
    "command": "python benchmarks/compare_optimizers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    "config": os.path.relpath(os.path.abspath(args.config), os.getcwd()),
    "config_name": os.path.basename(args.config),
    "optimizers": args.optimizers,
    "seeds": args.seeds,
    "label_noise_levels": args.label_noise,
    "label_noise_seed": args.label_noise_seed,
    "validation_fraction": args.validation_fraction,
    "epochs": (first.num_train_steps / _steps_per_epoch(first) if first.num_train_steps > 0 else first.num_epochs),
    "sharpness_rho": None if args.no_sharpness else first.sharpness_rho,
    "sharpness_num_iters": first.sharpness_num_iters,
    "overrides": {"rho": args.rho, "learning_rate": args.lr, "weight_decay": args.weight_decay},
    "sweep": None
    if args.no_sweep
    else {
      "seed": args.sweep_seed,
      "label_noise": args.sweep_noise,
      "msam_rho_grid": args.msam_rho_grid,
      "sam_rho_grid": args.sam_rho_grid,
      "lr_factors": args.lr_factors,
      "grid": grids,
      "runs": [],
      "chosen": {},
    },
    "environment": environment(),
    "load_average_start": os.getloadavg(),
    "runs": [],
  }
  if args.merge:
    merge_previous(payload, os.path.join(args.out, "results.json"))
  start = time.time()
  if sweep_configs:
    print(
      f"Sweep: {len(sweep_configs)} runs ({', '.join(f'{n} {len(g)}' for n, g in grids.items())}) at seed"
      f" {args.sweep_seed}, label noise {args.sweep_noise:g}, scored on the validation split",
      flush=True,
    )
    sweep_runs = payload["sweep"]["runs"]
    for index, (point, point_config) in enumerate(sweep_points):
      _run_all([point_config], mesh, sweep_runs, payload, args.out, f"sweep {index + 1}/{len(sweep_points)}:")
      sweep_runs[-1]["point"] = point
    for name in grids:
      payload["sweep"]["chosen"][name] = best_point([r for r in sweep_runs if r["optimizer"] == name])
      print(f"  {name}: chose {payload['sweep']['chosen'][name]}", flush=True)
    chosen = payload["sweep"]["chosen"]
    configs = [config_of(comparison_name(c), c.seed, c.label_noise, chosen.get(comparison_name(c))) for c in configs]
  print(
    f"{len(configs)} runs ({len(args.optimizers)} optimizers x {len(args.seeds)} seeds x"
    f" {len(args.label_noise)} noise levels), {payload['epochs']:g} epochs each, on"
    f" {payload['environment']['device']}; writing {args.out}",
    flush=True,
  )
  _run_all(configs, mesh, payload["runs"], payload, args.out, "comparison")
  payload["load_average_end"] = os.getloadavg()
  payload["total_seconds"] = time.time() - start
  if args.merge:
    payload["new_optimizers"] = args.optimizers
  write_report(args.out, payload, args.dpi)
  print()
  print(open(os.path.join(args.out, "table.md")).read())
  return payload


if __name__ == "__main__":
  main()
