"""The model a run reports: unperturbed parameters with the batch-norm statistics of its accuracy.

Written once at the end of a run to `workdir/evaluated_model/<step>` (orbax:
temporary directory, then rename, so it is complete or absent), and read back
with `load_for_eval(workdir)` for evaluation or export.

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


def _manager(workdir: epath.Path, create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(workdir / MODEL_DIR, options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(workdir: epath.Path, step: int, variables: dict) -> epath.Path:
  """Writes `variables` ({"params", "batch_stats"?}) as the evaluated model of `step`; returns its path."""
  manager = _manager(workdir, create=True)
  if step in manager.all_steps():  # a run that stopped after saving it and before results.json
    manager.delete(step)
  manager.save(step, args=ocp.args.StandardSave(variables), force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir / MODEL_DIR / str(step)


def load_for_eval(workdir: str | epath.PathLike):
  """`(model, variables, config)` of a finished run, the variables on this process's first device.

  `model.apply(variables, images, train=False)` gives the logits whose accuracy
  is `results.json`'s `final_eval_accuracy`.
  """
  from msam_jax import data, models  # noqa: PLC0415 (Flax, TensorFlow)

  workdir = run_record.as_path(workdir)
  config = run_record.read_config(workdir)
  if config is None:
    raise FileNotFoundError(f"{workdir} holds no run ({run_record.CONFIG_FILE} is missing).")
  manager = _manager(workdir, create=False)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{workdir / MODEL_DIR} holds no model; it is written when the run finishes.")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), manager.item_metadata(step).tree
  )
  variables = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  info = data.dataset_info(config.dataset, image_size=config.image_size)
  model = models.build(config.model, info.num_classes, dtype=jnp.dtype(config.dtype), **config.model_kwargs)
  return model, variables, ml_collections.ConfigDict(config)
