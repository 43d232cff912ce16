"""The summary over seeds: means, standard deviations, time ratios and paired differences to the base."""

import statistics

from benchmarks.compare.entries import BASE_OPTIMIZER, EMA_SUFFIX, MESA_OPTIMIZERS
from benchmarks.compare.runs import column_runs, columns_of, level_key, noise_levels, noise_of


# The metrics the summary gives over seeds.
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


def _mean_std(values: list[float]) -> dict:
  """Mean and sample standard deviation (ddof=1; 0 for one value) of the non-None values."""
  values = [v for v in values if v is not None]
  if not values:
    return {"mean": None, "std": None, "n": 0, "values": []}
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


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
