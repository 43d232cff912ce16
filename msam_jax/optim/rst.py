"""Randomized sharpness-aware training: each step is a SAM step with probability p.

Zhao, Zhang & Hu, "Randomized Sharpness-Aware Training for Boosting
Computational Efficiency in Deep Learning", arXiv:2203.09962 (2022).
"""

from typing import NamedTuple, Optional

import jax
import optax

from msam_jax import validation
from msam_jax.optim.numerics import value_at
from msam_jax.optim.sam import grouped_gradient, sam_direction_at, sam_variant


class RstState(NamedTuple):
  """State of `rst`: the update count (the draws are a function of it) and the base's state."""

  count: jax.Array  # int32 scalar: number of updates applied so far
  base_state: optax.OptState


def rst_coin(count, p: optax.ScalarOrSchedule, seed: int) -> jax.Array:
  """RST's draw for update `count` (0-based): True for a SAM step.

  ``uniform(fold_in(PRNGKey(seed), count)) < p(count)``: a pure function of
  the seed and the count, so a training loop computes on the host the draws
  its device would (threefry and the uniform's bits are exact integer
  operations on every backend; a constant `p` compares exactly) and a resumed
  run draws the same. Vectorise over counts with `jax.vmap`.
  """
  draw = jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(seed), count))
  return draw < value_at(p, count)


def rst(
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.05,
  p: optax.ScalarOrSchedule = 0.5,
  seed: int = 0,
  group_size: Optional[int] = None,
  axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """Randomized SAM (RST): a `sam` step with probability `p`, a base step otherwise.

  Zhao, Zhang & Hu, arXiv:2203.09962 (2022). One update::

    if uniform(fold_in(PRNGKey(seed), count)) < p:   # a SAM step (`rst_coin`)
      e  = rho g / (||g|| + 1e-12)
      g' = grad mean(loss_fn(p + e))
    else:                                     # a base step
      g' = g
    updates = base.update(g', params=p)

  Without ``second_gradient`` the branch is a `lax.cond` on the draw, so
  under `jax.jit` a base step takes one gradient and a SAM step two: the
  expected cost is ``1 + p`` gradients (but XLA:CPU runs convolution gradients
  inside a conditional slowly). ``second_gradient=True`` / ``False`` fixes
  the step kind when tracing instead: a loop that computes the draws on the
  host (`rst_coin`) compiles both and calls the one it needs, with no
  conditional. A constant ``p = 0`` or ``1`` needs no branch: it computes
  exactly `base` or ``sam(base, rho)``. The draws depend on `seed` and the
  update count only, so a resumed run draws the same.

  Args:
    base: any optax transformation; it receives the chosen gradient and the
      unperturbed params.
    rho: perturbation radius >= 0 of the SAM steps, a float or a schedule.
    p: probability in [0, 1] of a SAM step, a float or a schedule (Zhao et
      al. also schedule it).
    seed: seed of the draws.
    group_size: m-sharpness on the SAM steps, as in `sam`.
    axis_name: the mapped batch axis, as in `sam`: gradients are averaged
      over it on both kinds of step, and every device draws the same.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update(grads, state, params, *,
    loss_fn, losses=None, grad_fn=None, second_gradient=None)` as documented in
    `msam_jax.optim.sam`.

  Examples:
    >>> import jax.numpy as jnp, optax, msam_jax
    >>> tx = msam_jax.rst(msam_jax.sgd(0.1), rho=0.05, p=0.5, seed=0)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> loss_fn = lambda p, indices=None: jnp.sum(p["w"] ** 2, keepdims=True)  # one example
    >>> state = tx.init(params)
    >>> grads = {"w": 2 * params["w"]}
    >>> updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
    >>> params = optax.apply_updates(params, updates)
    >>> int(state.count)
    1
  """
  validation.in_interval("p", p, 0.0, 1.0, low_closed=True, high_closed=True)
  validation.integer("seed", seed, low=0, static=False)
  fixed = None if callable(p) else validation.concrete_value(p)
  always = {0.0: False, 1.0: True}.get(fixed)  # SAM on every step (True), on none (False), or drawn (None)

  def takes_second(inputs):  # p the constant 0 or 1: no branch, the same computation as `base` or `sam`
    return rst_coin(inputs.state.count, p, seed) if always is None else always

  sam_gradient = grouped_gradient(sam_direction_at, group_size)

  def sam_step(inputs):
    g, own = sam_gradient(inputs)
    return optax.tree.cast_like(g, inputs.params), own  # gradients have the params' dtypes

  return sam_variant("rst", base, rho, sam_step, takes_second=takes_second, state_type=RstState, axis_name=axis_name)
