"""Dynamic loss scaling, so float16 training cannot silently underflow.

Micikevicius et al. 2018, "Mixed Precision Training" (and torch.cuda.amp's
GradScaler): the step differentiates `scale * loss`, so small float16
activation gradients stay representable, and divides the float32 parameter
gradients by `scale` before the optimizer sees them. `dynamic_loss_scale(tx)`
wraps the optimizer and owns the scale:

    finite = grads and updates all finite
    finite:     step as tx would; after `period` finite steps in a row, scale *= factor
    not finite: skip the step (no update, inner state kept, schedules advanced);
                scale = max(scale / factor, 1)

A skipped step keeps the optimizer's own state (moments, its update count, so
Adam's bias correction counts applied updates) but advances the count of every
`optax.inject_hyperparams` in it, so learning-rate and rho schedules stay on the
training step (the data position, the epoch) as torch's GradScaler loop steps
its scheduler on skipped steps. A schedule passed straight to an optimizer
(not injected) follows that optimizer's update count, which a skip does not
advance; the training factory injects every schedule.

The SAM family computes its second gradient inside `tx.update` from
`loss_fn`; the wrapper hands it a `loss_fn` whose backward pass scales the
cotangent entering the loss and unscales it at the parameters
(`scaled_backward`), so that pass is protected too and every optimizer sees
unscaled gradients (MSAM's perturbation, SAM's ascent direction and its base
step alike).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation


class LossScaleState(NamedTuple):
  scale: jax.Array  # float32, the factor the loss is multiplied by
  good_steps: jax.Array  # int32, finite steps since the scale last changed
  inner_state: optax.OptState


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def current_scale(opt_state) -> jax.Array | None:
  """The loss scale of a `dynamic_loss_scale` state, None for any other state."""
  return opt_state.scale if isinstance(opt_state, LossScaleState) else None


def unscale(grads, scale: jax.Array):
  """Gradients of `scale * loss` back to gradients of `loss` (in their own, float32, dtype)."""
  return jax.tree.map(lambda g: (g / scale).astype(g.dtype), grads)


def scaled_backward(loss_fn, scale: jax.Array):
  """`loss_fn` with the same values, whose VJP runs with cotangents multiplied by `scale`.

  The result at the parameters is divided by `scale` again, so gradients are
  those of `loss_fn`, but every intermediate (float16) cotangent is `scale`
  times larger and does not underflow.
  """

  def wrapped(params, *args, **kwargs):
    @jax.custom_vjp
    def call(p):
      return loss_fn(p, *args, **kwargs)

    def forward(p):
      return jax.vjp(lambda q: loss_fn(q, *args, **kwargs), p)

    def backward(vjp, cotangent):
      (grads,) = vjp(jax.tree.map(lambda c: c * scale.astype(c.dtype), cotangent))
      return (unscale(grads, scale),)

    call.defvjp(forward, backward)
    return call(params)

  return wrapped


_INJECT_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _schedules_advanced(kept, stepped):
  """`kept` (the state before a skipped step) with the injected schedules' counts of `stepped`."""
  is_inject = lambda x: isinstance(x, _INJECT_STATES)

  def one(old, new):
    if not is_inject(old):
      return old
    advanced = {f: getattr(new, f) for f in old._fields if f != "inner_state"}
    return old._replace(**advanced, inner_state=_schedules_advanced(old.inner_state, new.inner_state))

  return jax.tree.map(one, kept, stepped, is_leaf=is_inject)


def dynamic_loss_scale(
  inner: optax.GradientTransformation, *, initial_scale: float = 2.0**15, period: int = 2000, factor: float = 2.0
) -> optax.GradientTransformation:
  """Wraps `inner` with a dynamic loss scale (see the module docstring).

  `update` takes unscaled gradients (the step divides by the scale it used);
  extra keyword arguments reach `inner.update`, `loss_fn` wrapped by `scaled_backward`.
  """
  validation.integer("period", period)  # a count of steps: not True, not 2.5
  validation.at_least("initial_scale", initial_scale, 1)
  validation.at_least("factor", factor, 1, strict=True)

  def init(params):
    return LossScaleState(jnp.asarray(initial_scale, jnp.float32), jnp.zeros((), jnp.int32), inner.init(params))

  def update(grads, state, params=None, **extra):
    if extra.get("loss_fn") is not None:
      extra["loss_fn"] = scaled_backward(extra["loss_fn"], state.scale)
    updates, inner_state = inner.update(grads, state.inner_state, params, **extra)
    finite = _all_finite(grads) & _all_finite(updates)
    updates, inner_state = jax.lax.cond(
      finite,
      lambda: (updates, inner_state),
      lambda: (jax.tree.map(jnp.zeros_like, updates), _schedules_advanced(state.inner_state, inner_state)),
    )
    grow = finite & (state.good_steps + 1 >= period)
    scale = jnp.where(
      finite, jnp.where(grow, state.scale * factor, state.scale), jnp.maximum(state.scale / factor, 1.0)
    )
    good_steps = jnp.where(finite & ~grow, state.good_steps + 1, 0).astype(jnp.int32)
    return updates, LossScaleState(scale, good_steps, inner_state)

  return optax.GradientTransformation(init, update)
