"""The original's label-smoothed cross-entropy, MESA's KL to a teacher, and top-k accuracy."""

import jax
import jax.numpy as jnp

from msam_jax.optim.numerics import widen


def smoothed_kl_loss(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
  """Per-example KL(q || softmax(logits)), as the original's `smooth_crossentropy`.

  The target q puts `1 - smoothing` on the true class and `smoothing / (C - 1)`
  on every other class (not `smoothing / C`). Being a KL divergence it equals the
  smoothed cross-entropy minus the constant entropy of q, so its gradient is the
  cross-entropy's. Computed in float32 or wider whatever the logits' dtype.

  Args:
    logits: `[B, C]` logits.
    labels: `[B]` integer class ids.
    smoothing: label smoothing in [0, 1).

  Returns:
    `[B]` per-example losses.
  """
  logits = widen(logits)
  num_classes = logits.shape[-1]
  off_value = smoothing / (num_classes - 1)
  targets = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), 1.0 - smoothing, off_value)
  targets = targets.astype(logits.dtype)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(jax.scipy.special.xlogy(targets, targets) - targets * log_probs, axis=-1)


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per-example 1.0 where the label is among the k largest logits, else 0.0."""
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def distillation_kl(logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """Per-example `T^2 KL(softmax(teacher / T) || softmax(logits / T))`, MESA's term.

  The direction and the `T^2` factor are those of the SAF paper's code
  (`F.kl_div(log_softmax(out / T), softmax(ema_out / T)).sum(-1) * T**2`): the
  teacher's distribution is the target. The teacher gets no gradient. Computed
  in float32 or wider whatever the logits' dtype.

  Args:
    logits: `[B, C]` logits of the model being trained.
    teacher_logits: `[B, C]` logits of the teacher (MESA: the EMA model).
    temperature: `T > 0`.

  Returns:
    `[B]` per-example terms.
  """
  logits, teacher_logits = widen(logits), widen(jax.lax.stop_gradient(teacher_logits))
  log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
  log_q = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  return temperature**2 * jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)
