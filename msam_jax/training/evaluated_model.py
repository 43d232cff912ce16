"""The models a run reports: unperturbed parameters with the batch-norm statistics of their accuracy.

Two kinds, each in its own orbax directory of the workdir (temporary
directory, then rename, so a model is complete or absent):

    evaluated_model/<step>  the final model, written once at the end of a run
    best_model/<step>       the model best on validation (`config.best_model_metric`),
                            written whenever an evaluation beats the best so far

Read either back with `load_for_eval(workdir)` (the final one) or
`load_for_eval(workdir, which="best")`, for evaluation or export.

    model, variables, config = load_for_eval("runs/digits")
    logits = model.apply(variables, images, train=False)
"""

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from msam_jax.training import run_record

MODEL_DIR = "evaluated_model"
BEST_MODEL_DIR = "best_model"
_DIRS = {"final": MODEL_DIR, "best": BEST_MODEL_DIR}


def _manager(workdir: epath.Path, create: bool, which: str = "final") -> ocp.CheckpointManager:
  # The best models: several may be needed at once (run_record.best_steps_needed), `keep_only` prunes them.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=1 if which == "final" else None, create=create, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(workdir / _DIRS[which], options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(workdir: epath.Path, step: int, variables: dict, which: str = "final") -> epath.Path:
  """Writes `variables` ({"params", "batch_stats"?}) as the `which` ("final" or "best") model of `step`.

  Replaces a model of the same step (one a stopped run wrote before it was
  stopped: the rerun computes it again); returns its path.
  """
  manager = _manager(workdir, create=True, which=which)
  if step in manager.all_steps():
    manager.delete(step)
  manager.save(step, args=ocp.args.StandardSave(variables), force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir / _DIRS[which] / str(step)


def keep_only(workdir: epath.Path, steps, which: str = "best") -> None:
  """Deletes the `which` models of every step not in `steps`."""
  manager = _manager(workdir, create=True, which=which)
  for step in manager.all_steps():
    if step not in steps:
      manager.delete(step)
  manager.close()


def with_best_model(workdir: epath.Path, history: list[dict]) -> list[dict]:
  """The evaluations of `history` whose best model is saved: those that can still be reported as the
  best (a run begun by a version that kept no best models has none for its evaluations before the
  upgrade; this one's keeps every model a resumed run may report, `run_record.best_steps_needed`)."""
  manager = _manager(workdir, create=False, which="best")
  saved = set(manager.all_steps())
  manager.close()
  return [entry for entry in history if entry["step"] in saved]


def _best_step(workdir: epath.Path, config) -> int:
  """The best model's step: a finished run's `best_step`, else the best of the evaluations so far."""
  results = run_record.read_json(workdir / run_record.RESULTS_FILE)
  metric = config.get("best_model_metric", "") if config.get("validation_fraction") else ""
  if results is not None:
    step = results.get("best_step")
  else:
    history = run_record.read_json(workdir / run_record.HISTORY_FILE) or []
    best = run_record.best_evaluation(with_best_model(workdir, history), metric)
    step = best["step"] if metric and best is not None else None
  if step is None:
    raise FileNotFoundError(
      f"{workdir} kept no best model (its run has no validation split, sets best_model_metric='' or has"
      " not been evaluated yet); load the final model with which='final'."
    )
  return step


def load_for_eval(workdir: str | epath.PathLike, which: str = "final"):
  """`(model, variables, config)` of a run, the variables on this process's first device.

  `which="final"` (a finished run's model): `model.apply(variables, images,
  train=False)` gives the logits whose accuracy is `results.json`'s
  `final_eval_accuracy`. `which="best"`: the model best on validation, whose
  accuracy is `best_eval_accuracy` (while the run goes on: the best so far).
  """
  from msam_jax import data, models

  if which not in _DIRS:
    raise ValueError(f"which={which!r} is not a model a run keeps; choose 'final' or 'best'.")
  workdir = run_record.as_path(workdir)
  config = run_record.read_config(workdir)
  if config is None:
    raise FileNotFoundError(f"{workdir} holds no run ({run_record.CONFIG_FILE} is missing).")
  manager = _manager(workdir, create=False, which=which)
  step = _best_step(workdir, config) if which == "best" else manager.latest_step()
  if step is None or step not in manager.all_steps():
    written = "when the run finishes" if which == "final" else "when an evaluation beats the best so far"
    of_step = "" if step is None else f" of step {step}"
    raise FileNotFoundError(f"{workdir / _DIRS[which]} holds no model{of_step}; it is written {written}.")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), manager.item_metadata(step).tree
  )
  variables = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  info = data.dataset_info(config.dataset, image_size=config.image_size)
  model = models.build(config.model, info.num_classes, dtype=jnp.dtype(config.dtype), **config.model_kwargs)
  return model, variables, ml_collections.ConfigDict(config)
