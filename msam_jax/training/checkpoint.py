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


def create_manager(workdir: str, max_to_keep: int, asynchronous: bool = True) -> ocp.CheckpointManager:
  """A manager of `workdir/checkpoints`.

  Unfinished checkpoints of a crashed run stay behind as orbax temporary
  directories; they are never restored. (Orbax's own clean-up of them runs in a
  background thread, which races with anything that patches the file system,
  such as `tfds.testing.mock_data`.) `asynchronous=False` writes each checkpoint
  before training goes on.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=asynchronous)
  root = workdir if "://" in str(workdir) else os.path.abspath(workdir)  # gs:// stays a URL
  return ocp.CheckpointManager(os.path.join(root, "checkpoints"), options=options)


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
