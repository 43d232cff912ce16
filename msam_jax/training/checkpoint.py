"""Orbax checkpoints of the whole train state, for exact resume.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash mid-write leaves the previous checkpoint intact and the
unfinished one is ignored on restart. In a multi-process run every process
calls `save` (it is a collective); orbax writes replicated arrays from the
primary process only.
"""
import os

import jax
import orbax.checkpoint as ocp


def create_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` as checkpoint `step`, asynchronously (`manager.wait_until_finished()`)."""
  manager.save(step, args=ocp.args.StandardSave(state))


def restore_latest(manager: ocp.CheckpointManager, state):
  """The latest checkpoint laid out like `state` (same shardings), or `state` if none."""
  step = manager.latest_step()
  if step is None:
    return state
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))
