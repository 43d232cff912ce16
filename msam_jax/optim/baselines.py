"""The baselines: SGD and AdamW with the semantics of the original Momentum-SAM code.

These are the optimizers the paper compares against (and that SAM, ESAM
and LookSAM step with). They differ from `optax.sgd` / `optax.adamw` where the
original differs from them:

* `sgd`: torch-style coupled weight decay and momentum,
  ``d = g + wd p; buf = mu buf + d; p -= lr (d + mu buf if nesterov else buf)``.
  (`optax.sgd` has no weight decay; `optax.trace` is torch's momentum.)
* `adamw`: the decoupled decay is applied *after* the Adam step,
  ``p = (p - lr/(1-b1^t) m/(sqrt(s)/sqrt(1-b2^t) + eps)) (1 - lr wd)``,
  while `optax.adamw` (like `torch.optim.AdamW`) decays the old parameters.
  The difference, ``lr^2 wd`` times the Adam step, is far above round-off.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.numerics import value_at, wide_dtype, widen


def applies_weight_decay(weight_decay, params) -> bool:
  """Whether an update applies `weight_decay`; it then needs the parameters.

  Only the constant 0 skips the decay: a schedule or an injected (traced)
  value might be non-zero.
  """
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:
    return False
  validation.require_params(params, "weight decay")
  return True


def sgd(
  learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
  """SGD with torch-style momentum and coupled (L2) weight decay.

  Args:
    learning_rate: a float or an optax schedule (update count -> value).
    momentum: `mu` in [0, 1); the first step's buffer is the gradient itself. A
      Python 0 keeps no buffer (the same steps).
    weight_decay: L2 coefficient added to the gradient before the momentum.
    nesterov: torch's Nesterov variant ``d + mu * buf``.

  Returns:
    An `optax.GradientTransformationExtraArgs` (a chain: extra update arguments
    are ignored); `update` needs `params` (weight decay).

  Examples:
    >>> import jax.numpy as jnp, optax, msam_jax
    >>> tx = msam_jax.sgd(learning_rate=0.5, momentum=0.9)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> updates, state = tx.update({"w": jnp.array([2.0, 2.0])}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"]  # the first step: w - lr g
    Array([2., 3.], dtype=float32)
  """
  validation.non_negative("learning_rate", learning_rate)
  validation.in_interval("momentum", momentum, 0.0, 1.0, low_closed=True, high_closed=False)
  validation.non_negative("weight_decay", weight_decay)
  # A concrete momentum 0 keeps no buffer (torch and optax.sgd(momentum=None) keep none):
  # the trace would be a copy of the gradient, and `msam_of` would take it for a momentum.
  # Python numbers only: inject_hyperparams passes arrays (concrete at init, traced in update).
  keeps_momentum = not (isinstance(momentum, (int, float)) and momentum == 0)
  return optax.chain(
    optax.add_decayed_weights(weight_decay),
    optax.trace(decay=momentum, nesterov=nesterov) if keeps_momentum else optax.identity(),
    optax.scale_by_learning_rate(learning_rate),
  )


class AdamWState(NamedTuple):
  """State of `adamw`: the update count and the two Adam moments."""

  count: jax.Array  # int32 scalar: number of updates applied so far
  mu: optax.Updates  # exp_avg
  nu: optax.Updates  # exp_avg_sq


def check_adam_args(learning_rate, b1, b2, eps, weight_decay) -> None:
  validation.non_negative("learning_rate", learning_rate)
  validation.in_interval("b1", b1, 0.0, 1.0, low_closed=True, high_closed=False)
  validation.in_interval("b2", b2, 0.0, 1.0, low_closed=True, high_closed=False)
  validation.non_negative("eps", eps)
  validation.non_negative("weight_decay", weight_decay)


def init_adam_moments(params) -> tuple[optax.Updates, optax.Updates]:
  return optax.tree.zeros_like(params), optax.tree.zeros_like(params)


def update_adam_moments(grads, mu, nu, b1, b2):
  """``m = b1 m + (1-b1) g``, ``s = b2 s + (1-b2) g^2``, kept in the moments' dtypes."""
  mu = jax.tree.map(lambda g, m: (b1 * m + (1 - b1) * g).astype(m.dtype), grads, mu)
  nu = jax.tree.map(lambda g, s: (b2 * s + (1 - b2) * g * g).astype(s.dtype), grads, nu)
  return mu, nu


def adam_descent(mu, nu, count, learning_rate, b1, b2, eps):
  """The original's Adam step ``-(lr/(1-b1^t)) m / (sqrt(s)/sqrt(1-b2^t) + eps)``.

  `count` is the 1-based step t. Leaves come out in float32 or wider; the
  bias corrections are computed in that precision too.
  """
  dtype = wide_dtype(mu)
  t = count.astype(dtype)
  bias_correction1 = 1 - jnp.asarray(b1, dtype) ** t
  sqrt_bias_correction2 = jnp.sqrt(1 - jnp.asarray(b2, dtype) ** t)
  step_size = learning_rate / bias_correction1

  def leaf(m, s):
    m, s = widen(m, dtype), widen(s, dtype)
    return -step_size * m / (jnp.sqrt(s) / sqrt_bias_correction2 + eps)

  return jax.tree.map(leaf, mu, nu)


def adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 1e-2,
) -> optax.GradientTransformationExtraArgs:
  """AdamW as the original runs it: decoupled decay after the Adam step.

  Update (t the 1-based step count)::

    m = b1 m + (1 - b1) g;  s = b2 s + (1 - b2) g^2
    p = p - (lr / (1 - b1^t)) m / (sqrt(s) / sqrt(1 - b2^t) + eps)
    p = p (1 - lr wd)

  Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

  Args:
    learning_rate: a float or an optax schedule (update count -> value).
    b1, b2: decay rates of the first and second moment, in [0, 1).
    eps: added to the bias-corrected root of the second moment.
    weight_decay: decoupled decay coefficient (multiplied by the learning rate).

  Returns:
    An `optax.GradientTransformationExtraArgs` (extra update arguments are
    ignored); `update` needs `params` unless the weight decay is the constant 0.

  Examples:
    >>> import jax.numpy as jnp, optax, msam_jax
    >>> tx = msam_jax.adamw(learning_rate=0.5, weight_decay=0.0)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> updates, state = tx.update({"w": jnp.array([2.0, -8.0])}, tx.init(params), params)
    >>> [round(float(w), 4) for w in optax.apply_updates(params, updates)["w"]]  # first step: w - lr sign(g)
    [2.5, 4.5]
  """
  check_adam_args(learning_rate, b1, b2, eps, weight_decay)

  def init_fn(params):
    mu, nu = init_adam_moments(params)
    return AdamWState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(grads, state, params=None, **extra):
    del extra  # optax's convention: extra arguments meant for others are ignored
    lr = value_at(learning_rate, state.count)
    count = optax.safe_increment(state.count)
    mu, nu = update_adam_moments(grads, state.mu, state.nu, b1, b2)
    descent = adam_descent(mu, nu, count, lr, b1, b2, eps)
    updates = descent
    if applies_weight_decay(weight_decay, params):
      decay = lr * weight_decay
      # p_new = (p + descent) * (1 - lr wd)  =>  update = descent - lr wd (p + descent)
      updates = jax.tree.map(lambda s, p: s - decay * (p + s), descent, params)
    updates = optax.tree.cast_like(updates, grads)
    return updates, AdamWState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
