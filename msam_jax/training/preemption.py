"""Preemption: on SIGTERM, finish the step, checkpoint it, and exit with `EXIT_CODE`.

A preempted TPU VM, a SLURM time limit (`--signal=TERM@...`) or `kill` sends
SIGTERM. The loop asks `Preemption.reached(step)` after every step; when it
says yes, it saves a checkpoint of that step and raises `Preempted`, which
`train.py` turns into exit status 75 (EX_TEMPFAIL: "try again"); rerunning the
same command resumes from that checkpoint exactly. A second SIGTERM ends the
process at once (the signal's default action, status 143, also while a step
hangs in native code), leaving the newest complete checkpoint to resume from.
Python delivers signals to the main thread only: with the loop in another
thread SIGTERM is not caught, which `start` logs.

Several processes must stop after the same step. With `jax.distributed`
initialised, JAX's preemption sync manager (on by default) already catches
SIGTERM in every process and agrees on the step (the largest step any process
has reached, plus one): `multihost_utils.reached_preemption_sync_point`. A
single process needs no agreement and uses its own signal handler.

The handler stays until the run's `results.json` is written: after the last
step the loop asks `reached` between the parts of finishing the run, numbered
on from the last step (so that processes agree there too), and a notice stops
it with the last step's checkpoint; rerunning finishes the run.
"""

import signal
import threading

import jax
from absl import logging
from jax._src import distributed  # the sync manager's presence; no public accessor
from jax.experimental import multihost_utils

EXIT_CODE = 75


class Preempted(Exception):
  """The run was asked to stop and saved a checkpoint of `step`."""

  def __init__(self, step: int):
    super().__init__(
      f"preempted (SIGTERM): saved the checkpoint of step {step}; "
      f"rerun the same command to resume (exit status {EXIT_CODE})."
    )
    self.step = step


class Preemption:
  """Watches for a preemption notice between `start()` and `stop()`.

  `enabled=False` leaves SIGTERM's handling as it was: termination in a single
  process; with `jax.distributed`, JAX's sync manager still catches the signal
  (its own behaviour), and the loop ignores it.
  """

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.multihost = jax.distributed.is_initialized()
    self._notice = threading.Event()
    self._previous = None
    self._stopping = False  # `reached` said yes: it stays yes (the agreed step is never asked again)

  def start(self) -> "Preemption":
    can_handle = threading.current_thread() is threading.main_thread()
    if self.enabled and not self.multihost and can_handle:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    elif self.enabled and not self.multihost:
      logging.warning(
        "The training loop runs outside the main thread, where Python cannot catch SIGTERM: "
        "SIGTERM will end the run without a checkpoint of its step."
      )
    elif self.enabled and self.multihost and getattr(distributed.global_state, "preemption_sync_manager", None) is None:
      logging.warning("jax_enable_preemption_service is off: SIGTERM will not save a checkpoint.")
      self.enabled = False
    return self

  def stop(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    logging.warning(
      "SIGTERM: finishing the current step and saving a checkpoint (a second SIGTERM stops at once, "
      "leaving the newest checkpoint)."
    )
    self._notice.set()

  def reached(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop; every process must call it after every step."""
    if not self.enabled:
      return False
    if not self._stopping:
      if self.multihost:
        self._stopping = bool(multihost_utils.reached_preemption_sync_point(step))
      else:
        self._stopping = self._notice.is_set()
    return self._stopping
