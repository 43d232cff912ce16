"""Argument checks shared by the optimizers, models, data pipelines and analysis tools.

Every check raises `ValueError` with one message format,
``"<name> must be <requirement>, got <value!r>"``, so that a bad argument fails
where it is passed, in one line that names it. Bools are never numbers here
(``True`` is not a width, a seed or a learning rate).

Optimizer hyper-parameters may be schedules or arrays: what
`optax.inject_hyperparams` passes while it rebuilds a transformation inside a
jitted update is traced and cannot be inspected without a host
synchronisation, so only concrete values are checked; their values were
already checked where they were plain numbers.
"""

import numbers
from typing import Iterable, NoReturn

import jax
import jax.numpy as jnp
import numpy as np


def fail(name: str, value, requirement: str) -> NoReturn:
  """Raises the one message: ``<name> must be <requirement>, got <value!r>``."""
  raise ValueError(f"{name} must be {requirement}, got {value!r}")


def _is_bool(value) -> bool:
  return isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) == np.bool_


def _is_traced(value) -> bool:
  return isinstance(value, jax.core.Tracer)


def concrete_value(value) -> float | None:
  """`value` as a Python float when it is a concrete real scalar, else None."""
  if _is_bool(value):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  if (
    isinstance(value, (np.ndarray, np.generic, jax.Array))
    and not _is_traced(value)
    and np.ndim(value) == 0
    and (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer))
    and (not isinstance(value, jax.Array) or value.is_fully_addressable)
  ):
    return float(value)
  return None


def _real(name: str, value, requirement: str) -> float | None:
  """`value` as a float to check; None for what cannot be checked now.

  Schedules (callables) and arrays that are traced or not scalars pass
  unchecked; bools and other non-numbers fail.
  """
  v = concrete_value(value)
  if v is None and (_is_bool(value) or not (callable(value) or isinstance(value, (jax.Array, np.ndarray)))):
    fail(name, value, requirement)
  return v


def non_negative(name: str, value) -> None:
  """`value >= 0`: a number, a schedule or an array."""
  v = _real(name, value, "a number >= 0")
  if v is not None and not v >= 0:
    fail(name, value, "a number >= 0")


def in_interval(name: str, value, low: float, high: float, *, low_closed: bool, high_closed: bool) -> None:
  """`value` lies in the interval from `low` to `high`."""
  requirement = f"in {'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
  v = _real(name, value, requirement)
  if v is None:
    return
  ok_low = v >= low if low_closed else v > low
  ok_high = v <= high if high_closed else v < high
  if not (ok_low and ok_high):
    fail(name, value, requirement)


def at_least(name: str, value, low: float, *, strict: bool = False) -> None:
  """A concrete real number ``>= low`` (``> low`` when `strict`); no schedules or arrays of a traced value."""
  requirement = f"a number {'>' if strict else '>='} {low:g}"
  v = concrete_value(value)
  if v is None or not (v > low if strict else v >= low):
    fail(name, value, requirement)


def _bound(x: int) -> str:
  """An integer bound as written in code: 2**63 rather than its 19 digits."""
  if x >= 2**32 and x & (x - 1) == 0:
    return f"2**{x.bit_length() - 1}"
  return str(x)


def integer(
  name: str, value, low: int = 1, high: int | None = None, *, optional: bool = False, static: bool = True
) -> None:
  """An integer (Python or NumPy, never a bool) with ``low <= value`` (and ``< high``).

  Args:
    name: the argument as the caller knows it.
    value: the value to check.
    low, high: the valid range, ``[low, high)``; no upper end when `high` is None.
    optional: None is valid too.
    static: False also accepts a scalar integer array (an optimizer's
      hyper-parameter under `optax.inject_hyperparams`), checked when concrete.
  """
  if optional and value is None:
    return
  span = f">= {_bound(low)}" if high is None else f"in [{_bound(low)}, {_bound(high)})"
  requirement = f"{'None or ' if optional else ''}an integer {span}"
  if _is_bool(value):
    fail(name, value, requirement)
  if isinstance(value, (int, np.integer)):
    v = int(value)
  elif (
    not static
    and isinstance(value, (jax.Array, np.ndarray))
    and np.ndim(value) == 0
    and jnp.issubdtype(value.dtype, jnp.integer)
  ):
    if _is_traced(value):
      return
    v = int(value)
  else:
    fail(name, value, requirement)
  if v < low or (high is not None and v >= high):
    fail(name, value, requirement)


def boolean(name: str, value) -> None:
  """`value` is True or False (a Python or NumPy bool)."""
  if not isinstance(value, (bool, np.bool_)):
    fail(name, value, "True or False")


def one_of(name: str, value, choices: Iterable) -> None:
  """`value` is one of `choices` (listed in the message in their order), not a bool."""
  choices = tuple(choices)
  if _is_bool(value) or value not in choices:
    fail(name, value, f"one of {', '.join(map(str, choices))}")


def require_params(params, who: str, call: str = "update(grads, state, params)") -> None:
  """An optax `update` got `params`: `who` (e.g. "weight decay", "sam") reads them."""
  if params is None:
    raise ValueError(f"{who} needs the parameters: call {call}")
