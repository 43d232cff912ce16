"""One run: training it, its record in results.json, and the fields every part of the report reads."""

import functools
import statistics
import tempfile
import time

from benchmarks.compare.configs import DEFAULT_FIELDS, steps_per_epoch
from benchmarks.compare.entries import LATE_SAM, MESA_OPTIMIZERS, USES_RHO, comparison_name


# Per-run numbers copied from the training library's results.
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


def _field(config, path: str):
  """`config`'s value at a flattened path such as ``optimizer_kwargs.eta``."""
  return functools.reduce(lambda c, key: c[key], path.split("."), config)


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
  steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch(config)
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
