"""GSAM: SAM that also minimizes the surrogate gap.

Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan & Liu, "Surrogate
Gap Guided Sharpness-Aware Minimization", ICLR 2022 (arXiv:2203.08065).
Reference code: `gsam_gradient` in google-research/big_vision
(trainers/proj/gsam/gsam.py), a function for its pmap trainer; here an optax
transformation around any base. Its rho schedule is `schedules.gsam_rho`.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.numerics import global_norm, vdot, wide_dtype
from msam_jax.optim.sam import ascent_perturbation, directional_variant, perturb


def _unit(tree, dtype):
  """``tree / ||tree||`` in `dtype` (0 for a zero tree, where the reference divides by 0)."""
  norm = global_norm(tree).astype(dtype)
  norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
  return jax.tree.map(lambda x: x.astype(dtype) / norm, tree)


def _surrogate_gap_gradient(g, gr, alpha, minimize_fp: bool = True) -> optax.Updates:
  """GSAM's descent direction from the clean gradient `g` and the perturbed one `gr`.

  ``minimize_fp``: ``gr - alpha (g - (g.u) u)``, ``u = gr / ||gr||``: descend on
  the perturbed loss and on the surrogate gap, using only the part of `g`
  orthogonal to `gr`. Otherwise ``g + alpha (gr - (gr.v) v)``, ``v = g / ||g||``:
  descend on the clean loss plus the part of `gr` orthogonal to `g`. Dot
  products and norms are global over all leaves, in float32 or wider; the
  result has the dtypes of `gr`.
  """
  dtype = wide_dtype(g, gr)
  # The kept gradient, and the one whose part orthogonal to it enters with weight alpha.
  keep, split, sign = (gr, g, -1) if minimize_fp else (g, gr, 1)
  unit = _unit(keep, dtype)
  along = vdot(split, unit)
  residual = jax.tree.map(lambda s, u: s.astype(dtype) - along * u, split, unit)
  h = jax.tree.map(lambda k, r: k.astype(dtype) + sign * alpha * r, keep, residual)
  return jax.tree.map(lambda x, ref: x.astype(ref.dtype), h, gr)


def gsam(
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.05,
  alpha: float = 0.0,
  minimize_fp: bool = True,
  group_size: Optional[int] = None,
  axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """Surrogate-gap guided SAM.

  One update::

    g  = grads                                  # first pass, at p
    e  = rho g / (||g|| + 1e-12)
    gr = grad mean(loss_fn(p + e))              # second pass
    minimize_fp:  h = gr - alpha (g - (g.u) u),  u = gr / ||gr||
    otherwise:    h = g + alpha (gr - (gr.v) v), v = g / ||g||
    updates = base.update(h, params=p)

  GSAM ties rho to the learning rate: pass ``rho=schedules.gsam_rho(lr_schedule,
  lr_max, lr_min, rho_max, rho_min)``. With a constant rho and ``alpha=0``
  (``minimize_fp=True``) this is `sam`; with ``minimize_fp=False`` and
  ``alpha=0`` it is the base with the clean gradient (the second pass is
  wasted). big_vision's ``adaptive_perturbation`` option is not offered (`asam`
  is the adaptive perturbation).

  Args:
    base: any optax transformation; it receives `h` and the unperturbed params.
    rho: perturbation radius >= 0, a float or a schedule.
    alpha: weight of the surrogate-gap term, in [0, 1].
    minimize_fp: True minimizes the perturbed loss and the gap (the paper's
      GSAM); False the clean loss and the gap (big_vision: closer to plain
      training, fewer loss spikes).
    group_size: m-sharpness, as in `sam`: each group of m examples gets its own
      `g`, `e`, `gr` and `h`; the `h` are averaged; `grads` then unused (may be None).
    axis_name: per-device groups inside `shard_map`/`pmap`, as in `sam`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update(grads, state, params, *,
    loss_fn, losses=None, grad_fn=None)` as documented in `msam_jax.optim.sam`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, msam_jax
    >>> loss_fn = lambda p, indices=None: jnp.sum(p["w"] ** 2, keepdims=True)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = msam_jax.gsam(msam_jax.sgd(0.25), rho=5.0, alpha=0.0)  # alpha=0: SAM
    >>> grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    >>> updates, state = tx.update(grads, tx.init(params), params, loss_fn=loss_fn)
    >>> optax.apply_updates(params, updates)["w"]
    Array([0., 0.], dtype=float32)
  """
  validation.in_interval("alpha", alpha, 0.0, 1.0, low_closed=True, high_closed=True)
  validation.boolean("minimize_fp", minimize_fp)

  def direction_at(radius, params):
    del params

    def direction(g, p, grad_at):
      gr = grad_at(perturb(p, ascent_perturbation(g, radius)))
      return _surrogate_gap_gradient(g, gr, alpha, minimize_fp)

    return direction

  return directional_variant("gsam", base, rho, group_size, direction_at, axis_name)
