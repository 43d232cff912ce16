"""Sharpness probes: how flat is the loss around a point in parameter space?

SAM-family optimizers (and MSAM) claim to find flatter minima. These probes
measure flatness on any ``loss_fn(params) -> scalar`` so users can check the
claim on their own runs:

* :func:`sam_sharpness`, the quantity SAM minimises (Foret et al., 2021,
  https://arxiv.org/abs/2010.01412): the loss increase along the normalised
  gradient at radius ``rho``.
* :func:`hessian_max_eigenvalue`, the curvature along the sharpest direction,
  by power iteration on Hessian-vector products. The Hessian is never formed.

Both are pure functions of ``params`` and jittable. The loss should be
deterministic (a fixed batch, no dropout); for batch-norm models close over
the batch and the batch statistics the caller wants to measure with.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.numerics import NORM_EPS, global_norm, vdot, wide_dtype, widen

LossFn = Callable[[Any], jax.Array]


def _widened(tree: Any) -> Any:
  """Every leaf in float32, or in its own dtype when that is wider."""
  return jax.tree.map(widen, tree)


def sam_sharpness(loss_fn: LossFn, params: Any, rho: float | jax.Array) -> jax.Array:
  """Returns ``L(p + rho * g / ||g||) - L(p)`` with ``g = grad L(p)``.

  This is the first-order estimate of the worst-case loss increase within an
  L2 ball of radius ``rho``, i.e. the sharpness SAM minimises. ``||g||`` is the
  global L2 norm over all leaves of ``params``, computed in float32 or wider,
  with ``1e-12`` added as in the original SAM so a zero gradient gives zero
  sharpness instead of NaN.

  Args:
    loss_fn: ``loss_fn(params) -> scalar`` loss, deterministic.
    params: any pytree of floating-point arrays.
    rho: perturbation radius (>= 0). May be a traced value under ``jit``.

  Returns:
    A scalar, the loss increase at the perturbed parameters.

  Examples:
    >>> import jax.numpy as jnp
    >>> from msam_jax import analysis
    >>> loss_fn = lambda p: jnp.sum(p["w"] ** 2)  # at w = 0: L(rho u) - L(0) = rho^2
    >>> round(float(analysis.sam_sharpness(loss_fn, {"w": jnp.array([1e-3, 0.0])}, rho=0.5)), 3)
    0.251
  """
  validation.non_negative("rho", rho)
  loss, grads = jax.value_and_grad(loss_fn)(params)
  scale = rho / (global_norm(grads) + NORM_EPS)
  perturbed = jax.tree.map(lambda p, g: (p + scale * widen(g)).astype(p.dtype), params, grads)
  return loss_fn(perturbed) - loss


def hessian_vector_product(loss_fn: LossFn, params: Any, vector: Any) -> Any:
  """Returns ``H(params) @ vector`` by forward-over-reverse differentiation.

  ``vector`` is a pytree shaped like ``params``; the product costs about two
  gradient evaluations and the Hessian is never formed.
  """
  vector = optax.tree.cast_like(vector, params)
  return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def hessian_max_eigenvalue(loss_fn: LossFn, params: Any, rng: jax.Array, num_iters: int = 20) -> jax.Array:
  """Estimates the Hessian eigenvalue of largest magnitude by power iteration.

  Starting from a random direction (drawn from ``rng``), each iteration
  multiplies the iterate by the Hessian of ``loss_fn`` at ``params``
  (:func:`hessian_vector_product`) and normalises it with the global L2 norm
  over the whole pytree. The estimate is the Rayleigh quotient ``v^T H v`` of
  the last unit-norm iterate ``v``. Iterates and norms are kept in float32 or
  wider, also for bfloat16 params.

  Power iteration converges to the eigenvalue of largest *magnitude*. Near a
  minimum of a trained network the Hessian's dominant eigenvalue is its top
  positive one, the usual sharpness measure; at a saddle or an untrained point
  a large negative eigenvalue can be returned instead (with its sign).

  ``num_iters`` is the number of Hessian-vector products (each about the cost
  of two gradient evaluations). The error in the direction shrinks like
  ``|lambda_2 / lambda_1| ** num_iters``, and the Rayleigh quotient's error
  like its square, so well-separated top eigenvalues need few iterations while
  a near-degenerate top of the spectrum needs many (and if ``lambda`` and
  ``-lambda`` are both extreme the iterate oscillates; the magnitude is still
  right). The estimate approaches the true value from below in magnitude.

  Args:
    loss_fn: ``loss_fn(params) -> scalar`` loss, deterministic, twice
      differentiable.
    params: any pytree of floating-point arrays.
    rng: a ``jax.random`` key for the starting direction.
    num_iters: number of power iterations (>= 1). Static under ``jit`` keeps
      the loop a ``fori_loop`` with a known trip count.

  Returns:
    A scalar (float32, or float64 for float64 params), the eigenvalue estimate.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from msam_jax import analysis
    >>> loss_fn = lambda p: 3.0 * p["w"][0] ** 2 + 0.5 * p["w"][1] ** 2  # Hessian diag(6, 1)
    >>> top = analysis.hessian_max_eigenvalue(loss_fn, {"w": jnp.ones(2)}, jax.random.key(0), num_iters=5)
    >>> round(float(top), 3)
    6.0
  """
  validation.integer("num_iters", num_iters, static=False)

  def normalise(tree):
    scale = 1.0 / (global_norm(tree) + NORM_EPS)
    return jax.tree.map(lambda x: (scale * x).astype(x.dtype), tree)

  def power_step(_, carry):
    v, _ = carry
    hv = _widened(hessian_vector_product(loss_fn, params, v))
    rayleigh = vdot(v, hv)
    return normalise(hv), rayleigh

  start = normalise(optax.tree.random_like(rng, _widened(params)))
  eigenvalue0 = jnp.zeros((), wide_dtype(start))
  _, eigenvalue = jax.lax.fori_loop(0, num_iters, power_step, (start, eigenvalue0))
  return eigenvalue


def sharpness_metrics(
  loss_fn: LossFn, params: Any, rng: jax.Array, rho: float | jax.Array, num_iters: int = 20
) -> dict[str, jax.Array]:
  """Both probes at once, as a dict ready for a metrics writer.

  Returns ``{"sam_sharpness": ..., "hessian_max_eigenvalue": ...}``; see
  :func:`sam_sharpness` and :func:`hessian_max_eigenvalue`.
  """
  return {
    "sam_sharpness": sam_sharpness(loss_fn, params, rho),
    "hessian_max_eigenvalue": hessian_max_eigenvalue(loss_fn, params, rng, num_iters=num_iters),
  }
