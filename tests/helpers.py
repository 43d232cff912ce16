"""Helpers shared by the test directories (fixtures live in tests/conftest.py).

Imported as ``import helpers`` or ``from helpers import ...``: tests/conftest.py
puts this directory on sys.path. Only jax and numpy at import time, so the
optimizer tests keep running on the core install; orbax and ml_collections are
imported by the helpers that need them.
"""

import os

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- tiers


def everyday(values, keep) -> list:
  """`values` as pytest parameters, those not in `keep` marked `slow`.

  A test repeated over every optimizer (or size) runs its representatives `keep`
  in the everyday tier (``-m "not slow"``) and all of `values` in the full suite.
  """
  return [pytest.param(v, marks=() if v in keep else pytest.mark.slow) for v in values]


# ----------------------------------------------------------------------------- pytrees


def tree_arrays(tree) -> list[np.ndarray]:
  """The leaves of `tree` as numpy arrays, in tree order."""
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_equal(a, b):
  """Same structure, bit-identical leaves."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b, rtol):
  """Same structure, leaves within `rtol` (relative and absolute)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol)


# ----------------------------------------------------------------------------- programs


def iter_eqns(jaxpr):
  """All equations of a jaxpr, nested ones (jit, cond branches, ...) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from iter_eqns(sub)


# ----------------------------------------------------------------------------- training runs


def load_config(name: str, **overrides):
  """`configs/<name>.py`'s get_config(), with fields overridden.

  ``optimizer=`` switches the optimizer as the command line does (`training.set_optimizer`:
  shared options keep the file's values); ``optimizer_kwargs`` entries update its options.
  """
  from msam_jax import training  # the train extra
  from msam_jax.training import config as config_lib

  config = config_lib.load_file(os.path.join(REPO, "configs", f"{name}.py"))
  if "model_kwargs" in overrides:  # replaced whole: tiny test models set keys the config lacks
    config.model_kwargs = overrides.pop("model_kwargs")
  optimizer_kwargs = overrides.pop("optimizer_kwargs", {})
  training.set_optimizer(config, overrides.pop("optimizer", config.optimizer), **optimizer_kwargs)
  config.update_from_flattened_dict(overrides)
  return config


def final_checkpoint(workdir: str):
  """The latest checkpoint of a run, restored onto this process's first device.

  The template comes from the checkpoint's own metadata, so a checkpoint written
  on another device count (another process, 2 processes) restores too.
  """
  import orbax.checkpoint as ocp  # the train extra

  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers=ocp.StandardCheckpointHandler())
  step = manager.latest_step()
  assert step is not None, f"no checkpoint in {workdir}"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), manager.item_metadata(step).tree
  )
  return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
