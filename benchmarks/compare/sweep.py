"""The staged sweep on the validation split, and the two criteria that choose from it."""

import json
import math

from msam_jax.optim import registry

from benchmarks.compare.entries import BASE_OPTIMIZER, OPTIMIZERS, USES_RHO, registry_name


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


SWEEP_SEED = 100  # never a reported seed


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
