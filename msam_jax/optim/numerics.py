"""Numerics shared by the optimizers and the analysis tools: widening, norms, dot products.

Global norms decide the size of every SAM-family perturbation, so they are
accumulated in float32 or wider even when the parameters are bfloat16 (a
bfloat16 sum of squares keeps about 3 significant digits). Under `jax.jit` with
sharded arrays XLA turns the sums into cross-device reductions, so the norm is
always global, never per shard.
"""

import jax
import jax.numpy as jnp

NORM_EPS = 1e-12  # the original's guard in rho / (||g|| + eps), and in its LookSAM projection


def widen(x, dtype=jnp.float32) -> jax.Array:
  """`x` in `dtype` (float32 by default), or in its own dtype when that is wider."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, dtype))


def wide_dtype(*trees) -> jnp.dtype:
  """float32, or the widest float dtype among the leaves when that is wider."""
  dtypes = [
    jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype for tree in trees for x in jax.tree.leaves(tree)
  ]
  return jnp.result_type(jnp.float32, *[d for d in dtypes if jnp.issubdtype(d, jnp.floating)])


def _sum_of_squares(tree, mask=None) -> jax.Array:
  """Sum of squares over all leaves (those where `mask` is True), float32 or wider."""
  leaves = jax.tree.leaves(tree)
  flags = [True] * len(leaves) if mask is None else mask
  total = jnp.zeros([], wide_dtype(tree))
  for x, flag in zip(leaves, flags, strict=True):
    part = jnp.sum(jnp.square(widen(x))).astype(total.dtype)
    total = total + (part if flag is True else jnp.where(flag, part, 0))
  return total


def global_norm(tree, mask=None) -> jax.Array:
  """L2 norm over all leaves together (those where `mask` is True), float32 or wider."""
  return jnp.sqrt(_sum_of_squares(tree, mask))


def vdot(a, b) -> jax.Array:
  """Sum over all leaves of the elementwise product, float32 or wider."""
  total = jnp.zeros([], wide_dtype(a, b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    total = total + jnp.sum(widen(x) * widen(y)).astype(total.dtype)
  return total


def value_at(hyperparam, count: jax.Array):
  """A hyper-parameter's value for the update with 0-based index `count`."""
  return hyperparam(count) if callable(hyperparam) else hyperparam
