"""LookSAM: a SAM step every k steps, its sharpness direction reused in between.

Liu, Mai, Chen, Hsieh & You, "Towards Efficient and Scalable Sharpness-Aware
Minimization", CVPR 2022 (arXiv:2203.02714).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.numerics import NORM_EPS, global_norm, vdot
from msam_jax.optim.sam import ascent_perturbation, mean_loss_grad, perturb, sam_variant


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
  validation.integer("k", k, static=False)
  validation.non_negative("alpha", alpha)

  def takes_second(inputs):
    return looksam_sam_step(inputs.state.count, inputs.radius, k)

  def sam_step(inputs):
    grads = inputs.grads
    grad_norm = global_norm(grads)
    e = ascent_perturbation(grads, inputs.radius, norm=grad_norm)
    g2 = mean_loss_grad(inputs.loss_fn, perturb(inputs.params, e), grad_fn=inputs.grad_fn)
    along = vdot(g2, grads) / (grad_norm**2 + NORM_EPS)
    gv = jax.tree.map(lambda a, b: a - along * b, g2, grads)
    gv_norm = global_norm(gv)
    inv = jnp.where(gv_norm > 0, 1 / jnp.where(gv_norm > 0, gv_norm, 1), 0)
    gv = jax.tree.map(lambda x, o: (inv * x).astype(o.dtype), gv, inputs.state.orthogonal_direction)
    return optax.tree.cast_like(g2, grads), {"orthogonal_direction": gv}

  def reuse_step(inputs):
    gv = inputs.state.orthogonal_direction
    scale = alpha * global_norm(inputs.grads)
    g = jax.tree.map(lambda a, b: (a + scale * b).astype(a.dtype), inputs.grads, gv)
    return g, {"orthogonal_direction": gv}

  def init_fields(params):
    return {"orthogonal_direction": optax.tree.zeros_like(params)}

  return sam_variant(
    "looksam",
    base,
    rho,
    sam_step,
    reuse_step,
    takes_second=takes_second,
    state_type=LookSamState,
    init_fields=init_fields,
  )
