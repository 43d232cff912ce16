"""LookSAM: a SAM step every k steps, its sharpness direction reused in between.

Liu, Mai, Chen, Hsieh & You, "Towards Efficient and Scalable Sharpness-Aware
Minimization", CVPR 2022 (arXiv:2203.02714).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.numerics import NORM_EPS, global_norm, value_at, vdot
from msam_jax.optim.sam import (
  UPDATE_CALL,
  GradFn,
  LossFn,
  ascent_perturbation,
  base_update,
  check_base,
  check_second_gradient,
  mean_loss_grad,
  perturb,
  refuse_multi_steps,
)


def looksam_sam_step(count, rho, k: int):
  """Whether update `count` (0-based) is a LookSAM SAM step: every `k`-th from the first, where rho > 0.

  At rho 0 there is no sharpness direction to measure (``g2 = g``, and `gv`
  would be the normalised round-off), so such an update reuses the stored
  direction instead: zero until the first SAM step, so a rho schedule that
  starts at 0 (late-phase SAM) trains as the base until rho turns on.
  Plain operators only: the same rule on Python or NumPy values (a training
  loop deciding on the host) as on the traced count.
  """
  return (count % k == 0) & (rho > 0)


class LookSamState(NamedTuple):
  """State of `looksam`: update count, the unit direction `gv`, the base's state."""

  count: jax.Array
  orthogonal_direction: optax.Updates  # gv: unit part of g2 orthogonal to g, one buffer
  base_state: optax.OptState


def looksam(
  base: optax.GradientTransformation, rho: optax.ScalarOrSchedule = 0.05, k: int = 5, alpha: float = 0.2
) -> optax.GradientTransformationExtraArgs:
  """LookSAM: SAM's second gradient only every `k`-th step.

  On updates 0, k, 2k, ... (the original's counter starts at k), those with
  rho > 0 (`looksam_sam_step`)::

    e  = rho g / (||g|| + 1e-12)
    g2 = grad mean(loss_fn(p + e))
    gv = g2 - (<g2, g> / (||g||^2 + 1e-12)) g;  gv = gv / ||gv||
    step with g2

  on the other k - 1 updates, one gradient only::

    step with g + alpha ||g|| gv

  Without ``second_gradient`` the branch is a `lax.cond` on the count, so
  under `jax.jit` the second forward/backward runs only on SAM steps (but
  XLA:CPU runs convolution gradients inside a conditional slowly).
  ``second_gradient=True`` / ``False`` fixes the step kind when tracing
  instead: a loop that knows the count on the host (``looksam_sam_step(step,
  rho, k)``) compiles both and calls the one it needs, with no conditional.

  Args:
    base: the optimizer stepping with the chosen gradient (the original: `sgd`).
    rho: perturbation radius >= 0, a float or a schedule.
    k: period of the SAM steps, an integer >= 1 (the original's default 5).
    alpha: weight of the reused direction (the original's default 0.2).

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update(grads, state, params, *,
    loss_fn, losses=None, grad_fn=None, second_gradient=None)` as documented in
    `msam_jax.optim.sam`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, msam_jax
    >>> loss_fn = lambda p, indices=None: jnp.sum(p["w"] ** 2, keepdims=True)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = msam_jax.looksam(msam_jax.sgd(0.1), rho=0.05, k=5)
    >>> grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    >>> updates, state = tx.update(grads, tx.init(params), params, loss_fn=loss_fn)  # update 0: a SAM step
    >>> int(state.count), [round(float(w), 3) for w in optax.apply_updates(params, updates)["w"]]
    (1, [2.394, 3.192])
  """
  check_base(base)
  validation.non_negative("rho", rho)
  validation.integer("k", k, static=False)
  validation.non_negative("alpha", alpha)

  def init_fn(params):
    return LookSamState(
      count=jnp.zeros([], jnp.int32), orthogonal_direction=optax.tree.zeros_like(params), base_state=base.init(params)
    )

  def update_fn(
    grads,
    state,
    params=None,
    *,
    loss_fn: LossFn,
    losses: Optional[jax.Array] = None,
    grad_fn: Optional[GradFn] = None,
    second_gradient: Optional[bool] = None,
    **extra,
  ):
    del losses
    validation.require_params(params, "looksam", UPDATE_CALL)
    check_second_gradient(second_gradient)
    refuse_multi_steps("looksam")
    rho_now = value_at(rho, state.count)
    grad_norm = global_norm(grads)

    def sam_step(_):
      e = ascent_perturbation(grads, rho_now, norm=grad_norm)
      g2 = mean_loss_grad(loss_fn, perturb(params, e), grad_fn=grad_fn)
      along = vdot(g2, grads) / (grad_norm**2 + NORM_EPS)
      gv = jax.tree.map(lambda a, b: a - along * b, g2, grads)
      gv_norm = global_norm(gv)
      inv = jnp.where(gv_norm > 0, 1 / jnp.where(gv_norm > 0, gv_norm, 1), 0)
      gv = jax.tree.map(lambda x, o: (inv * x).astype(o.dtype), gv, state.orthogonal_direction)
      return optax.tree.cast_like(g2, grads), gv

    def reuse_step(_):
      scale = alpha * grad_norm
      g = jax.tree.map(lambda a, b: (a + scale * b).astype(a.dtype), grads, state.orthogonal_direction)
      return g, state.orthogonal_direction

    if second_gradient is None:
      step_grads, gv = jax.lax.cond(looksam_sam_step(state.count, rho_now, k), sam_step, reuse_step, None)
    else:
      step_grads, gv = (sam_step if second_gradient else reuse_step)(None)
    updates, base_state = base_update(base, step_grads, state.base_state, params, extra)
    return updates, LookSamState(
      count=optax.safe_increment(state.count), orthogonal_direction=gv, base_state=base_state
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
