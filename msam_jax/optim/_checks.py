"""Construction-time checks of hyper-parameters.

Only concrete numbers are checked: schedules and traced arrays (what
`optax.inject_hyperparams` passes while it rebuilds a transformation inside a
jitted update) cannot be inspected without a host synchronisation, and their
values were already checked where they were plain numbers.
"""
import numbers

import jax
import numpy as np


def concrete_value(value) -> float | None:
  """`value` as a Python float when it is a concrete real scalar, else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
    return float(value)
  if (isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
      and value.ndim == 0 and value.is_fully_addressable):
    return float(value)
  return None


def _fail(name: str, value, valid: str):
  raise ValueError(f"{name} must be {valid}, got {value!r}")


def non_negative(name: str, value) -> None:
  """`value >= 0` (a float, a schedule or an array)."""
  v = concrete_value(value)
  if v is not None and not v >= 0:
    _fail(name, value, "a number >= 0 (or a schedule)")


def in_interval(name: str, value, low: float, high: float, *,
                low_closed: bool, high_closed: bool) -> None:
  """`value` lies in the interval from `low` to `high`."""
  v = concrete_value(value)
  if v is None:
    return
  ok_low = v >= low if low_closed else v > low
  ok_high = v <= high if high_closed else v < high
  if not (ok_low and ok_high):
    interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
    _fail(name, value, f"in {interval}")


def positive_int(name: str, value) -> None:
  """An integer >= 1."""
  v = concrete_value(value)
  if v is not None and not (v >= 1 and v == int(v)):
    _fail(name, value, "an integer >= 1")
