"""ESAM: SAM made cheaper by perturbing some tensors and re-differentiating few examples.

Du, Yan, Feng, Zhou, Zhen, Goh & Tan, "Efficient Sharpness-aware Minimization
for Improved Training of Neural Networks", ICLR 2022 (arXiv:2110.03141).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.sam import ascent_perturbation, mean_loss_grad, perturb, sam_variant

KEEP_ALL_GAMMA = 0.99  # the original keeps the whole batch from this gamma on


class EsamState(NamedTuple):
  """State of `esam`: update count, the key of the tensor draws, the base's state."""

  count: jax.Array
  key: jax.Array  # raw uint32[2] PRNG key, advanced every update
  base_state: optax.OptState


def _kept_examples(gamma: float, batch_size: int) -> int:
  """How many examples the second backward pass uses: ``floor(gamma * B)``.

  All `B` when ``gamma >= 0.99`` (as the original). The original itself keeps
  those strictly above the ``floor(gamma B)``-th largest sharpness, i.e. one
  fewer; ``gamma = (floor(gamma B) - 1) / B`` reproduces it.
  """
  if gamma >= KEEP_ALL_GAMMA:
    return batch_size
  k = math.floor(gamma * batch_size)
  if k < 1:
    raise ValueError(
      f"gamma * batch size must be >= 1 to keep an example, got gamma={gamma} with batch size {batch_size}"
    )
  return k


def _static_gamma(gamma) -> float:
  value = validation.concrete_value(gamma)
  if value is None:
    raise ValueError(
      "gamma must be a concrete float: it fixes the static size of the second pass's "
      "sub-batch. With optax.inject_hyperparams pass static_args=('gamma',)."
    )
  return value


def esam(
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.05,
  beta: float = 0.5,
  gamma: float = 0.5,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """Efficient SAM: stochastic weight perturbation and sharpness-sensitive data selection.

  One update (batch of `B` examples)::

    each parameter tensor takes part with probability beta (drawn per step)
    e       = rho g / (||g|| + 1e-12) on the taking-part tensors (0 elsewhere,
              and left out of the norm)
    sharp   = loss_fn(p + e) - losses               # per example, forward only
    kept    = the k = floor(gamma B) examples of largest sharpness
    g2      = grad mean(loss_fn(p + e, kept))       # backward on k examples
    updates = base.update(g2, params=p)

  The second backward really runs on a gathered sub-batch of static size `k`
  (`loss_fn` receives `indices` of shape ``[k]``), which is where ESAM saves
  time. With ``gamma >= 0.99`` all examples are used and the forward pass that
  measures sharpness is skipped. Pass the first pass's per-example losses as
  ``losses=`` to save one forward pass; otherwise they are recomputed.

  Deliberate difference: the original keeps only the examples strictly above
  the k-th largest sharpness (k - 1 of them); this keeps k, as the paper says.

  ``second_gradient=False`` is the base step with `grads` (the tensor draw
  still advances). That is ESAM's step at rho 0 only when ``gamma >= 0.99``:
  below, ESAM at rho 0 still keeps the k examples of largest "sharpness",
  which is then round-off, and steps with their gradient. A training loop
  passes it on the steps whose scheduled rho is 0 (late-phase ESAM: the base
  until rho turns on), not that subset step.

  Args:
    base: the optimizer stepping with `g2` (the original: `sgd`).
    rho: perturbation radius >= 0, a float or a schedule.
    beta: probability in (0, 1] that a tensor is perturbed.
    gamma: kept fraction of the batch, in (0, 1]; must be a concrete float (with
      `optax.inject_hyperparams`, list it in `static_args`).
    seed: seed of the tensor draws.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update(grads, state, params, *,
    loss_fn, losses=None, second_gradient=None)` as documented in `msam_jax.optim.sam`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, msam_jax
    >>> x = jnp.array([1.0, 2.0, 3.0, 4.0])  # four examples
    >>> loss_fn = lambda p, indices=None: (p["w"] * (x if indices is None else x[indices])) ** 2
    >>> params = {"w": jnp.array(1.0)}
    >>> tx = msam_jax.esam(msam_jax.sgd(0.01), rho=0.05, beta=1.0, gamma=0.5)
    >>> grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    >>> step = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn))
    >>> updates, state = step(grads, tx.init(params), params)
    >>> round(float(updates["w"]), 4)  # -lr * grad at w + rho, on the 2 sharpest examples (x = 3, 4)
    -0.2625
  """
  validation.in_interval("beta", beta, 0.0, 1.0, low_closed=False, high_closed=True)
  validation.in_interval("gamma", gamma, 0.0, 1.0, low_closed=False, high_closed=True)

  def second_pass(inputs):
    grads, params, loss_fn = inputs.grads, inputs.params, inputs.loss_fn
    key, draw = jax.random.split(inputs.state.key)
    num_tensors = len(jax.tree.leaves(grads))
    participating = list(jax.random.uniform(draw, (num_tensors,)) < beta)
    perturbed = perturb(params, ascent_perturbation(grads, inputs.radius, participating))
    g = _static_gamma(gamma)
    if g >= KEEP_ALL_GAMMA:
      return mean_loss_grad(loss_fn, perturbed), {"key": key}
    before = loss_fn(params) if inputs.losses is None else inputs.losses
    sharpness = jax.lax.stop_gradient(loss_fn(perturbed) - before)
    _, kept = jax.lax.top_k(sharpness, _kept_examples(g, sharpness.shape[0]))
    return mean_loss_grad(loss_fn, perturbed, jnp.sort(kept)), {"key": key}

  def base_step(inputs):  # second_gradient=False (docstring): the tensor draw still advances
    key, _ = jax.random.split(inputs.state.key)
    return inputs.grads, {"key": key}

  def init_fields(params):
    del params
    return {"key": jax.random.PRNGKey(seed)}

  return sam_variant("esam", base, rho, second_pass, base_step, state_type=EsamState, init_fields=init_fields)
