"""Device prefetch: the next global batches move to the devices while the current step runs.

    batches = prefetch.to_devices(host_batches, functools.partial(mesh.global_batch, mesh))
    for step ...: state = train_step(state, next(batches))
    input_wait_fraction = batches.wait_seconds / training_seconds

A background thread pulls host batches (numpy, from tf.data) and hands them
to `put` (e.g. `jax.make_array_from_process_local_data`, which starts the
host-to-device copies), keeping up to `size` batches on the devices ahead of
the one the step uses. JAX dispatches steps asynchronously, so a loop that
blocks here leaves the devices idle for lack of input: `wait_seconds` measures
exactly that time.

No JAX here: `put` does the device work.
"""

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from msam_jax import validation

_POLL_SECONDS = 0.1
# Running producers. Stopped and joined at exit: a daemon thread still inside
# TensorFlow or JAX while the interpreter finalises aborts the process.
_RUNNING: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def _stop_all() -> None:
  for stop, thread in list(_RUNNING):
    stop.set()
    thread.join(timeout=10)


class _End:
  """Queue item: the host iterator ended (`error` None) or raised `error`."""

  def __init__(self, error: BaseException | None):
    self.error = error


def _produce(host: Iterator[Any], put: Callable[[Any], Any], ready: queue.Queue, stop: threading.Event) -> None:
  """Fills `ready` with put(batch) until the host iterator ends or `stop` is set."""
  try:
    _fill(host, put, ready, stop)
  finally:
    _RUNNING.discard((stop, threading.current_thread()))


def _fill(host, put, ready: queue.Queue, stop: threading.Event) -> None:
  while not stop.is_set():
    try:
      item = put(next(host))
    except StopIteration:
      item = _End(None)
    except BaseException as error:
      item = _End(error)
    while not stop.is_set():
      try:
        ready.put(item, timeout=_POLL_SECONDS)
        break
      except queue.Full:
        continue
    if isinstance(item, _End):
      return


def _stop_one(running: tuple[threading.Event, threading.Thread]) -> None:
  running[0].set()  # the thread leaves _RUNNING when it ends


class DevicePrefetcher:
  """Iterator over put(batch) of a host iterator, `size` batches ahead, with wait accounting.

  Attributes:
    wait_seconds: seconds `__next__` blocked because no batch was ready, after
      the first batch.
    startup_seconds: the first batch's wait (the pipeline starting up).
  """

  def __init__(self, host: Iterator[Any], put: Callable[[Any], Any], *, size: int = 2):
    validation.integer("size", size)
    self.wait_seconds = 0.0
    self.startup_seconds = 0.0
    self._first = True
    self._done: _End | None = None
    self._ready: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    # The thread holds no reference to self, so dropping the prefetcher stops it.
    self._thread = threading.Thread(
      target=_produce, args=(host, put, self._ready, self._stop), name="device-prefetch", daemon=True
    )
    running = (self._stop, self._thread)
    _RUNNING.add(running)
    self._thread.start()
    weakref.finalize(self, _stop_one, running)

  def __iter__(self):
    return self

  def __next__(self):
    if self._done is not None:
      return self._raise(self._done)
    try:
      item = self._ready.get_nowait()
    except queue.Empty:
      begin = time.perf_counter()
      item = self._ready.get()
      waited = time.perf_counter() - begin
      if self._first:
        self.startup_seconds += waited
      else:
        self.wait_seconds += waited
    self._first = False
    if isinstance(item, _End):
      self._done = item
      return self._raise(item)
    return item

  @staticmethod
  def _raise(end: _End):
    if end.error is None:
      raise StopIteration
    raise end.error

  def close(self) -> None:
    """Stops the background thread (also done when the prefetcher is garbage collected)."""
    _stop_one((self._stop, self._thread))
    self._thread.join()


def to_devices(host: Iterator[Any], put: Callable[[Any], Any], *, size: int = 2) -> DevicePrefetcher:
  """`DevicePrefetcher(host, put, size=size)`: put(batch) for each host batch, `size` ahead."""
  return DevicePrefetcher(host, put, size=size)
