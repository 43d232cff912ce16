"""What a workdir records about its run, so a run can be resumed, rerun or read back.

    workdir/
      config.json         the config the run started with (fields in RESUMABLE_FIELDS
                          follow the latest restart)
      eval_history.json   one entry per evaluation so far, rewritten after each
      training.json       the training's own numbers (last logged train loss,
                          throughput), written when the last step is done, so
                          a run stopped while finishing reports them
      checkpoints/        the train state (orbax), for exact resume
      evaluated_model/    the model whose accuracy results.json reports
      best_model/         the model best on validation so far (config.best_model_metric)
      results.json        written last: the run is finished when it holds the run's steps

Paths are `etils.epath` paths (what orbax and TFDS use), so `~` and `gs://` work;
every file is written to a temporary name and renamed, so a crash never leaves
half a file. Nothing here imports TensorFlow or jax.
"""

import json
import os
from typing import Any

import ml_collections
from etils import epath

from msam_jax.training import config as config_lib

CONFIG_FILE = "config.json"
HISTORY_FILE = "eval_history.json"
RESULTS_FILE = "results.json"
TRAINING_FILE = "training.json"


class WorkdirError(ValueError):
  """The workdir cannot hold a run (a file, under a file, not writable)."""


class RunMismatchError(ValueError):
  """The workdir holds a run started with another config."""


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath: `~` expanded and made absolute when local; `gs://...` as is."""
  p = epath.Path(path)
  if "://" not in os.fspath(path):
    p = p.expanduser().resolve()
  return p


def check_workdir(workdir: str | os.PathLike) -> epath.Path:
  """The workdir as a path; raises WorkdirError unless it is or can become a writable directory.

  Creates nothing: the nearest existing ancestor must be a directory (and
  writable, where the file system can say so).
  """
  path = as_path(workdir)
  existing = path
  while not existing.exists():
    if existing.parent == existing:
      break
    existing = existing.parent
  if existing.exists() and not existing.is_dir():
    where = "is a file" if existing == path else f"is under {existing}, which is a file"
    raise WorkdirError(f"workdir {path} {where}; pass a directory (new or existing) as --workdir.")
  local = "://" not in os.fspath(path)
  if local and not os.access(os.fspath(existing), os.W_OK | os.X_OK):
    raise WorkdirError(
      f"workdir {path} is not writable ({existing} is read-only for this user); pass another --workdir."
    )
  return path


def write_json(path: epath.Path, value: Any) -> None:
  """Writes `value` as JSON to `path` atomically (temporary file, then rename)."""
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(json.dumps(value, indent=2))
  tmp.replace(path)


def read_json(path: epath.Path) -> Any:
  return json.loads(path.read_text()) if path.exists() else None


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_record(config: ml_collections.ConfigDict) -> dict:
  """The config as the JSON that `config.json` holds (references resolved)."""
  return json.loads(json.dumps(config.to_dict()))


def read_config(workdir: epath.Path) -> ml_collections.ConfigDict | None:
  """The config a workdir's run records, or None."""
  record = read_json(workdir / CONFIG_FILE)
  return None if record is None else ml_collections.ConfigDict(record)


# Optimizer options that were flat fields under their own names before `optimizer_kwargs` (0.1.0).
_FLAT_OPTIMIZER_OPTIONS = ("momentum", "nesterov", "weight_decay", "b1", "b2", "eps")


def upgraded_record(recorded: dict) -> dict:
  """A config record written by an older version, flattened and in this version's fields.

  Renamed fields take their new names (`config.RENAMED_FIELDS`; the flat optimizer options
  of 0.1.0 move into `optimizer_kwargs`, options of other optimizers are dropped as
  `config.resolve` drops them), and a field the record lacks takes its default: each field
  was added with the default that does what the versions before it did.
  """
  old = _flatten(recorded)
  defaults = config_lib.base_config()
  try:  # the recorded model's and optimizer's options, with their defaults
    config_lib.set_model(defaults, old.get("model", defaults.model))
    config_lib.set_optimizer(defaults, old.get("optimizer", defaults.optimizer))
  except config_lib.ConfigError:  # a name this version lacks: the comparison names the field
    pass
  options = set(defaults.optimizer_kwargs)
  renames = {**config_lib.RENAMED_FIELDS, **{f: f"optimizer_kwargs.{f}" for f in _FLAT_OPTIMIZER_OPTIONS}}
  for field, new in renames.items():
    if field in old:
      value = old.pop(field)
      if new.removeprefix("optimizer_kwargs.") in options:
        old.setdefault(new, value)
  return {**_flatten(config_record(defaults)), **old}


def differing_fields(recorded: dict, current: dict) -> list[str]:
  """The flattened fields whose values differ, except those that may change on resume."""
  old, new = _flatten(recorded), _flatten(current)
  # The synthetic dataset's description means nothing to a run on another dataset.
  unused = () if "synthetic" in (old.get("dataset"), new.get("dataset")) else ("synthetic.",)
  return [
    k
    for k in sorted(set(old) | set(new))
    if k not in config_lib.RESUMABLE_FIELDS
    and not k.startswith(unused)
    and old.get(k, "<absent>") != new.get(k, "<absent>")
  ]


def check_run(workdir: epath.Path, config: ml_collections.ConfigDict, num_steps: int) -> dict | None:
  """The stored results if the workdir holds this run finished; None if it is new or unfinished.

  Raises RunMismatchError naming the fields that differ from the recorded config.
  """
  if not workdir.exists():
    return None
  recorded = read_json(workdir / CONFIG_FILE)
  if recorded is not None:
    current = config_record(config)
    differing = differing_fields(upgraded_record(recorded), current)
    if differing:
      named = ", ".join(differing[:4]) + (f" and {len(differing) - 4} more" if len(differing) > 4 else "")
      raise RunMismatchError(
        f"{workdir / CONFIG_FILE} records other values of {named}; rerun with them or pass a new --workdir"
        " (see docs/resuming.md)."
      )
  results = read_json(workdir / RESULTS_FILE)
  if results is not None and results.get("steps") == num_steps:
    return results
  return None


def record_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Creates the workdir and records the config (only resumable fields can differ from a recorded one)."""
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(workdir / CONFIG_FILE, config_record(config))


def load_history(workdir: epath.Path, up_to_step: int) -> list[dict]:
  """The evaluations recorded up to `up_to_step` (later ones belong to steps about to be redone)."""
  history = read_json(workdir / HISTORY_FILE) or []
  return [entry for entry in history if entry["step"] <= up_to_step]


def _rank(entry: dict, metric: str) -> tuple[float, float]:
  accuracy, loss = entry["validation_accuracy"], entry["validation_loss"]
  return (accuracy, -loss) if metric == "validation_accuracy" else (-loss, accuracy)


def best_evaluation(history: list[dict], metric: str) -> dict | None:
  """The entry of `history` best on `metric` (config.BEST_MODEL_METRICS), the other validation metric
  breaking ties (higher accuracy, lower loss), the earliest breaking exact ones; None if empty."""
  best = None
  for entry in history:
    if best is None or _rank(entry, metric) > _rank(best, metric):
      best = entry
  return best


def best_steps_needed(history: list[dict], checkpoint_steps, metric: str) -> set[int]:
  """The steps of the best models a run may still report: the best of `history`, and the best
  of its part up to each checkpoint (what a run resumed from that checkpoint has kept)."""
  cuts = [None, *checkpoint_steps]
  best = (best_evaluation([e for e in history if cut is None or e["step"] <= cut], metric) for cut in cuts)
  return {entry["step"] for entry in best if entry is not None}


def save_history(workdir: epath.Path, history: list[dict]) -> None:
  write_json(workdir / HISTORY_FILE, history)


def write_results(workdir: epath.Path, results: dict) -> None:
  write_json(workdir / RESULTS_FILE, results)


def save_training(workdir: epath.Path, numbers: dict) -> None:
  write_json(workdir / TRAINING_FILE, numbers)


def load_training(workdir: epath.Path) -> dict | None:
  """What `save_training` wrote when the last step was done; None if it never was."""
  return read_json(workdir / TRAINING_FILE)
