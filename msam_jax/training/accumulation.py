"""Gradient accumulation: one global batch as k micro-batches inside the jitted step.

Micro-batch `j` holds the examples `j, j + k, j + 2k, ...` of the global batch.
With the batch split over devices in contiguous blocks and `k` dividing the
per-device batch, every device holds an equal, contiguous part of every
micro-batch, so the split moves no data between devices. The micro-batches are
visited by `lax.scan`, so only one micro-batch's activations are alive at a time.
All micro-batches have the same size, so the mean of their mean-loss gradients
is the gradient of the mean loss over the whole batch.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def split(batch, k: int):
  """`[B, ...]` leaves -> `[k, B // k, ...]`, micro-batch `j` = examples `j::k`."""

  def one(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

  return jax.tree.map(one, batch)


def merge(stacked):
  """The inverse of `split`: `[k, B // k, ...]` -> `[B, ...]` in the batch's order."""

  def one(x):
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])

  return jax.tree.map(one, stacked)


def value_and_grad(fun: Callable[..., tuple[jax.Array, Any]], params, micro_batches):
  """The mean over micro-batches of `grad fun`, and `fun`'s auxiliary outputs stacked.

  `fun(params, micro_batch, index) -> (mean loss, aux)`; `index` in `[0, k)`
  lets the caller derive per-micro-batch randomness. The gradient is summed in
  the parameters' dtypes and divided by k once.
  """
  k = jax.tree.leaves(micro_batches)[0].shape[0]

  def body(total, xs):
    micro_batch, index = xs
    (_, aux), grads = jax.value_and_grad(fun, has_aux=True)(params, micro_batch, index)
    return jax.tree.map(jnp.add, total, grads), aux

  total, aux = jax.lax.scan(body, optax.tree.zeros_like(params), (micro_batches, jnp.arange(k)))
  return aux, jax.tree.map(lambda g: g / k, total)


def mean_grad(fun: Callable[..., jax.Array], params, micro_batches):
  """The mean over micro-batches of `grad fun`, `fun(params, micro_batch, index) -> mean loss`."""
  _, grads = value_and_grad(lambda p, b, i: (fun(p, b, i), None), params, micro_batches)
  return grads
