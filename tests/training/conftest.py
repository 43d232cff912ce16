"""Helpers of the training tests: load a config file, read a run's final parameters."""
import importlib.util
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name: str, **overrides):
  """`configs/<name>.py`'s get_config(), with fields overridden."""
  spec = importlib.util.spec_from_file_location(f"configs.{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if "model_kwargs" in overrides:  # replaced whole: tiny test models set keys the config lacks
    config.model_kwargs = overrides.pop("model_kwargs")
  config.update_from_flattened_dict(overrides)
  return config


def final_checkpoint(workdir: str):
  """The latest checkpoint of a run, restored onto this process's first device.

  The template comes from the checkpoint's own metadata, so a checkpoint written
  on another device count (another process, 2 processes) restores too.
  """
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  item_handlers=ocp.StandardCheckpointHandler())
  step = manager.latest_step()
  assert step is not None, f"no checkpoint in {workdir}"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step).tree)
  return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))


@pytest.fixture
def one_device_mesh():
  from msam_jax.training.mesh import create_mesh
  return create_mesh(jax.devices()[:1])


def tree_arrays(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
