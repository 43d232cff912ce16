"""--merge: an earlier results.json of the same settings joins this comparison; its finished runs are reused."""

import json

from benchmarks.compare.entries import OPTIMIZERS


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
