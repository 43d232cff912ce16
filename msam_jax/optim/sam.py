"""SAM around any optax optimizer, and the ascent step the SAM family shares.

Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for
Efficiently Improving Generalization", ICLR 2021 (arXiv:2010.01412).

The SAM family (`sam`, `esam`, `looksam`) are
`optax.GradientTransformationExtraArgs` called as::

  updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=losses)

`grads` is the gradient of the mean loss at `params` (the first pass the
training step computes anyway); `loss_fn(params, indices=None)` returns the
per-example losses of the current batch, shape `[B]`, or of the examples at the
integer positions `indices`, shape `[len(indices)]`; `losses` (optional) are the
first pass's per-example losses, which ESAM uses and the others ignore. The
transformation computes the further gradients itself, or (`sam`, `looksam`)
with the optional ``grad_fn(params)``: the gradient of the mean loss over the
whole batch, which a training loop that accumulates micro-batches passes.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from msam_jax.optim import _checks
from msam_jax.optim._numerics import global_norm, value_at

NORM_EPS = 1e-12  # the original's guard in rho / (||g|| + eps)

LossFn = Callable[..., jax.Array]  # loss_fn(params, indices=None) -> per-example losses
GradFn = Callable[[optax.Params], optax.Updates]  # grad_fn(params) -> grad of the mean loss


class SamState(NamedTuple):
  """State of `sam`: the update count (for a rho schedule) and the base's state."""
  count: jax.Array
  base_state: optax.OptState


def ascent_perturbation(grads: optax.Updates, rho, participating=None,
                        norm: Optional[jax.Array] = None) -> optax.Updates:
  """SAM's ascent ``e = rho g / (||g|| + 1e-12)``, the norm in float32 or wider.

  Args:
    grads: the first-pass gradient (without weight decay).
    rho: the perturbation radius (a scalar).
    participating: optional list of boolean scalars, one per leaf of `grads`
      (ESAM's stochastic weight perturbation): leaves marked False get ``e = 0``
      and are left out of the norm.
    norm: ``||g||`` when the caller has it already (over the participating leaves).

  Returns:
    `e`, a tree like `grads` with the leaves' dtypes.
  """
  if norm is None:
    norm = global_norm(grads, participating)
  scale = rho / (norm + NORM_EPS)
  leaves, treedef = jax.tree.flatten(grads)
  flags = [True] * len(leaves) if participating is None else participating
  out = []
  for g, flag in zip(leaves, flags, strict=True):
    e = (scale * g.astype(jnp.promote_types(g.dtype, scale.dtype))).astype(g.dtype)
    out.append(e if flag is True else jnp.where(flag, e, jnp.zeros_like(e)))
  return jax.tree.unflatten(treedef, out)


def perturb(params: optax.Params, e: optax.Updates) -> optax.Params:
  """``params + e``, leaf dtypes kept."""
  return jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, e)


def mean_loss_grad(loss_fn: LossFn, params: optax.Params, indices=None,
                   grad_fn: Optional[GradFn] = None) -> optax.Updates:
  """Gradient of the mean of `loss_fn`'s per-example losses; `grad_fn(params)` when given."""
  if grad_fn is not None:
    if indices is not None:
      raise ValueError("grad_fn gives the whole batch's gradient; it cannot select examples")
    return grad_fn(params)
  if indices is None:
    return jax.grad(lambda p: jnp.mean(loss_fn(p)))(params)
  return jax.grad(lambda p: jnp.mean(loss_fn(p, indices)))(params)


def check_base(base) -> None:
  if not isinstance(base, optax.GradientTransformation):
    raise ValueError(f"base must be an optax.GradientTransformation, got {type(base).__name__}")


def base_update(base: optax.GradientTransformation, grads, state, params, extra: dict[str, Any]):
  """The base optimizer's step; extra args reach it only if it accepts them."""
  return optax.with_extra_args_support(base).update(grads, state, params, **extra)


def sam(base: optax.GradientTransformation,
        rho: optax.ScalarOrSchedule = 0.05) -> optax.GradientTransformationExtraArgs:
  """Sharpness-aware minimization: the base step with the gradient at ``p + e``.

  One update::

    g1 = grads                                # first pass, at p
    e  = rho g1 / (||g1|| + 1e-12)            # g1 without weight decay
    g2 = grad mean(loss_fn(p + e))            # second pass
    updates = base.update(g2, params=p)       # base step at the unperturbed p

  The original SAM is ``sam(sgd(...), rho)``, AdamW-SAM ``sam(adamw(...), rho)``
  and its gradient clipping ``sam(optax.chain(optax.clip_by_global_norm(c),
  adamw(...)), rho)`` (clips g2).

  Args:
    base: any optax transformation; it receives `g2` and the unperturbed params.
    rho: perturbation radius >= 0, a float or a schedule; 0 gives `base`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update(grads, state, params, *,
    loss_fn, losses=None, grad_fn=None)` (see the module docstring).
  """
  check_base(base)
  _checks.non_negative("rho", rho)

  def init_fn(params):
    return SamState(count=jnp.zeros([], jnp.int32), base_state=base.init(params))

  def update_fn(grads, state, params=None, *, loss_fn: LossFn,
                losses: Optional[jax.Array] = None, grad_fn: Optional[GradFn] = None, **extra):
    del losses  # SAM recomputes nothing of the first pass
    if params is None:
      raise ValueError("sam needs the parameters: call update(grads, state, params, loss_fn=...)")
    e = ascent_perturbation(grads, value_at(rho, state.count))
    g2 = mean_loss_grad(loss_fn, perturb(params, e), grad_fn=grad_fn)
    updates, base_state = base_update(base, g2, state.base_state, params, extra)
    return updates, SamState(count=optax.safe_increment(state.count), base_state=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
