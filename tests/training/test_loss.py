"""The original's label-smoothed KL loss and top-k accuracy, against hand-written formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msam_jax.training.loss import smoothed_kl_loss, top_k_correct


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_kl_matches_definition(smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4))
  labels = np.array([0, 1, 2, 3, 1, 0])
  q = np.full((6, 4), smoothing / 3)
  q[np.arange(6), labels] = 1 - smoothing
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  with np.errstate(divide="ignore", invalid="ignore"):
    plogp = np.where(q > 0, q * np.log(q), 0.0)
  expected = (plogp - q * log_p).sum(-1)
  np.testing.assert_allclose(
    smoothed_kl_loss(jnp.asarray(logits, jnp.float32), labels, smoothing), expected, rtol=1e-5, atol=1e-6
  )


def test_gradient_equals_cross_entropy_with_smoothed_target():
  logits = jnp.array([[1.0, -2.0, 0.5], [0.0, 0.3, 3.0]])
  labels = jnp.array([2, 0])
  q = jnp.array([[0.05, 0.05, 0.9], [0.9, 0.05, 0.05]])
  g_kl = jax.grad(lambda z: smoothed_kl_loss(z, labels, 0.1).sum())(logits)
  g_ce = jax.grad(lambda z: -(q * jax.nn.log_softmax(z)).sum())(logits)
  np.testing.assert_allclose(g_kl, g_ce, rtol=1e-6)


def test_bfloat16_logits_give_float32_loss():
  loss = smoothed_kl_loss(jnp.ones((2, 5), jnp.bfloat16), jnp.array([0, 1]), 0.1)
  assert loss.dtype == jnp.float32


def test_top_k_correct():
  logits = jnp.array([[0.1, 0.5, 0.2, 0.9], [3.0, 1.0, 2.0, 0.0]])
  labels = jnp.array([1, 3])
  np.testing.assert_array_equal(top_k_correct(logits, labels, 1), [0.0, 0.0])
  np.testing.assert_array_equal(top_k_correct(logits, labels, 2), [1.0, 0.0])
  np.testing.assert_array_equal(top_k_correct(logits, labels, 4), [1.0, 1.0])
