"""The single-process SIGTERM handler: a notice on the first signal, the default action on the second."""

import os
import signal
import threading

from msam_jax.training import preemption


def test_first_sigterm_is_a_notice_the_second_ends_the_process_at_once():
  before = signal.getsignal(signal.SIGTERM)
  preempt = preemption.Preemption().start()
  try:
    assert not preempt.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)  # handled in this (main) thread before the next line runs
    assert preempt.reached(1)
    # The kernel's default action from now on: terminates even while a step hangs in native code.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  finally:
    preempt.stop()
  assert signal.getsignal(signal.SIGTERM) == before


def test_outside_the_main_thread_sigterm_handling_off_is_logged(caplog):
  started = []
  thread = threading.Thread(target=lambda: started.append(preemption.Preemption().start()))
  with caplog.at_level("WARNING"):
    thread.start()
    thread.join()
  assert signal.getsignal(signal.SIGTERM) != started[0]._on_sigterm
  lines = [r.getMessage() for r in caplog.records if "outside the main thread" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0] and "SIGTERM" in lines[0]
  assert not started[0].reached(1)
