"""The device prefetcher: order, how far it runs ahead, errors, end, wait accounting."""

import threading
import time

import pytest

from msam_jax.data import prefetch


class _Host:
  """A host iterator that counts what was pulled; item `block_at` waits for `release`."""

  def __init__(self, num, block_at=None):
    self.num, self.pulled, self.block_at = num, 0, block_at
    self.release = threading.Event()

  def __iter__(self):
    return self

  def __next__(self):
    if self.pulled == self.block_at:
      self.release.wait()
    if self.pulled == self.num:
      raise StopIteration
    self.pulled += 1
    return self.pulled - 1


def _wait_until(condition):
  deadline = time.monotonic() + 10
  while not condition():
    assert time.monotonic() < deadline, "the prefetch thread made no progress"
    time.sleep(0.005)


def test_yields_put_of_every_batch_in_order_then_stops():
  batches = prefetch.to_devices(_Host(7), lambda x: ("device", x))
  assert list(batches) == [("device", i) for i in range(7)]
  with pytest.raises(StopIteration):
    next(batches)


def test_runs_at_most_size_batches_ahead():
  host = _Host(100)
  batches = prefetch.to_devices(host, lambda x: x, size=2)
  _wait_until(lambda: host.pulled == 3)  # two queued, a third waiting to be queued
  time.sleep(0.2)
  assert host.pulled == 3
  assert next(batches) == 0
  _wait_until(lambda: host.pulled == 4)
  batches.close()


def test_an_error_of_the_host_iterator_reaches_the_loop():
  def host():
    yield 1
    raise ValueError("broken record")

  batches = prefetch.to_devices(host(), lambda x: x)
  assert next(batches) == 1
  with pytest.raises(ValueError, match="broken record"):
    next(batches)


def test_wait_counts_only_blocking_after_the_first_batch():
  host = _Host(100, block_at=3)
  batches = prefetch.to_devices(host, lambda x: x, size=2)
  assert next(batches) == 0  # start-up
  _wait_until(lambda: batches._ready.full())
  assert next(batches) == 1 and next(batches) == 2  # ready: no wait
  assert batches.wait_seconds == 0.0
  threading.Timer(0.05, host.release.set).start()
  assert next(batches) == 3  # had to wait for the host
  assert batches.wait_seconds > 0.0
  batches.close()


def test_bad_size():
  with pytest.raises(ValueError, match="size"):
    prefetch.to_devices(iter([]), lambda x: x, size=0)
