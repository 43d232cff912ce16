"""Orbax checkpoints of the whole train state, for exact resume.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash mid-write leaves the previous checkpoint intact and the
unfinished one is ignored on restart. A checkpoint damaged later (truncated
files after a full disk) is moved aside to `workdir/damaged_checkpoints/` and
the run resumes from the newest readable one. In a multi-process run every
process calls `save` (it is a collective); orbax writes replicated arrays from
the primary process only.
"""

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

DAMAGED_DIR = "damaged_checkpoints"


class CheckpointError(RuntimeError):
  """No checkpoint of the workdir can be read."""


def create_manager(workdir: epath.PathLike, max_to_keep: int, asynchronous: bool = True) -> ocp.CheckpointManager:
  """A manager of `workdir/checkpoints` (an absolute local path or a `gs://` one).

  Unfinished checkpoints of a crashed run stay behind as orbax temporary
  directories; they are never restored. (Orbax's own clean-up of them runs in a
  background thread, which races with anything that patches the file system,
  such as `tfds.testing.mock_data`.) `asynchronous=False` writes each checkpoint
  before training goes on.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` as checkpoint `step`, asynchronously (`manager.wait_until_finished()`)."""
  manager.save(step, args=ocp.args.StandardSave(state))


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _move_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  directory = epath.Path(manager.directory)
  target = directory.parent / DAMAGED_DIR / str(step)
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    (directory / str(step)).rename(target)
  return target


def restore_latest(manager: ocp.CheckpointManager, state):
  """The newest readable checkpoint laid out like `state` (same shardings), or `state` if none.

  A checkpoint that cannot be read is skipped with a warning naming its step
  and, once an older one has been read, moved aside (never deleted).

  Raises:
    CheckpointError: checkpoints exist but none can be read (all are left in place).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  unreadable = {}
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
      unreadable[step] = _first_line(e)
      logging.warning("Checkpoint of step %d cannot be read (%s); trying an older one.", step, unreadable[step])
      continue
    for bad in unreadable:
      target = _move_aside(manager, bad)
      logging.warning("Moved the unreadable checkpoint of step %d to %s; resuming from step %d.", bad, target, step)
    if unreadable:
      manager.reload()
    return restored
  if unreadable:
    steps = ", ".join(map(str, unreadable))
    raise CheckpointError(
      f"no checkpoint in {manager.directory} can be read (steps {steps}; newest: "
      f"{next(iter(unreadable.values()))}); if it was written by another config or version, "
      f"pass a new --workdir; to start this one from scratch, move {manager.directory} away."
    )
  return state
