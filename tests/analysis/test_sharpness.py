"""Sharpness probes against closed-form answers and a dense Hessian."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from msam_jax import analysis


def _symmetric(eigenvalues, seed):
  """A symmetric matrix with the given eigenvalues and random eigenvectors."""
  n = len(eigenvalues)
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  return q @ np.diag(eigenvalues) @ q.T


def _two_leaf_quadratic(eigenvalues, seed=0):
  """L = 0.5 p^T A p + b^T p on params {'w': (2, 3), 'v': (2,)} (8 numbers)."""
  a = _symmetric(eigenvalues, seed)
  b = np.random.default_rng(seed + 1).normal(size=8)
  template = {"w": jnp.zeros((2, 3)), "v": jnp.zeros((2,))}
  _, unravel = ravel_pytree(template)

  def loss_fn(params):
    flat, _ = ravel_pytree(params)
    return 0.5 * flat @ jnp.asarray(a) @ flat + jnp.asarray(b) @ flat

  rng = np.random.default_rng(seed + 2)
  params = unravel(jnp.asarray(rng.normal(size=8)))
  return loss_fn, params, a, b


def _closed_form_sharpness(a, b, flat, rho):
  """L(p + e) - L(p) = g^T e + 0.5 e^T A e, with e = rho * g / ||g||."""
  g = a @ flat + b
  e = rho * g / np.linalg.norm(g)
  return g @ e + 0.5 * e @ a @ e


EIGENVALUES = [5.0, 2.0, 1.5, 1.0, 0.5, 0.1, -0.3, -1.0]


@pytest.mark.parametrize("rho", [0.05, 0.5, 2.0])
def test_sam_sharpness_quadratic_closed_form(x64, rho):
  loss_fn, params, a, b = _two_leaf_quadratic(EIGENVALUES)
  flat = np.asarray(ravel_pytree(params)[0])
  got = analysis.sam_sharpness(loss_fn, params, rho)
  np.testing.assert_allclose(got, _closed_form_sharpness(a, b, flat, rho), rtol=1e-10)


def test_sam_sharpness_zero_gradient_is_zero_not_nan():
  """At an exact stationary point the 1e-12 guard avoids 0 / 0."""
  quadratic = lambda p: 0.5 * jnp.sum(p["w"] ** 2) + jnp.sum(p["v"] ** 2)
  params = {"w": jnp.zeros((2, 3)), "v": jnp.zeros((2,))}
  assert analysis.sam_sharpness(quadratic, params, 0.1) == 0.0


@pytest.mark.parametrize(
  "eigenvalues, expected",
  [
    (EIGENVALUES, 5.0),
    # Largest magnitude wins, sign included.
    ([-6.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.0], -6.0),
  ],
)
def test_hessian_max_eigenvalue_quadratic(x64, eigenvalues, expected):
  loss_fn, params, _, _ = _two_leaf_quadratic(eigenvalues, seed=3)
  got = analysis.hessian_max_eigenvalue(loss_fn, params, jax.random.key(0), num_iters=60)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_more_iterations_are_more_accurate(x64):
  """A small spectral gap (2.0 vs 1.8) converges slowly: num_iters matters."""
  eigenvalues = [2.0, 1.8, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
  loss_fn, params, _, _ = _two_leaf_quadratic(eigenvalues, seed=4)
  errors = [
    abs(float(analysis.hessian_max_eigenvalue(loss_fn, params, jax.random.key(1), num_iters=n)) - 2.0)
    for n in (2, 10, 100)
  ]
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 1e-6
  # Power iteration approaches a positive top eigenvalue from below.
  assert errors[0] > 1e-3


def test_zero_hessian_gives_zero_not_nan():
  linear = lambda p: jnp.sum(p["w"]) + 2.0 * jnp.sum(p["v"])
  params = {"w": jnp.ones((2, 3)), "v": jnp.ones((2,))}
  got = analysis.hessian_max_eigenvalue(linear, params, jax.random.key(0), num_iters=3)
  assert got == 0.0


def _mlp_problem(seed=0):
  """A 4-6-3 tanh MLP with softmax cross-entropy on a fixed batch."""
  rng = np.random.default_rng(seed)
  params = {
    "dense0": {"kernel": rng.normal(size=(4, 6)) / 2, "bias": rng.normal(size=6) / 4},
    "dense1": {"kernel": rng.normal(size=(6, 3)) / 2, "bias": rng.normal(size=3) / 4},
  }
  params = jax.tree.map(jnp.asarray, params)
  inputs = jnp.asarray(rng.normal(size=(16, 4)))
  labels = jnp.asarray(rng.integers(0, 3, size=16))

  def loss_fn(p):
    hidden = jnp.tanh(inputs @ p["dense0"]["kernel"] + p["dense0"]["bias"])
    logits = hidden @ p["dense1"]["kernel"] + p["dense1"]["bias"]
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

  return loss_fn, params


def _dense_hessian(loss_fn, params):
  flat, unravel = ravel_pytree(params)
  hessian = jax.hessian(lambda f: loss_fn(unravel(f)))(flat)
  return np.asarray(flat), np.asarray(hessian)


def test_mlp_eigenvalue_matches_dense_hessian(x64):
  loss_fn, params = _mlp_problem(seed=1)
  _, hessian = _dense_hessian(loss_fn, params)
  eigenvalues = np.linalg.eigvalsh(hessian)
  by_magnitude = eigenvalues[np.argsort(-np.abs(eigenvalues))]
  expected = by_magnitude[0]
  # A clear spectral gap, so 200 iterations converge to float64 precision.
  assert abs(by_magnitude[1] / expected) < 0.6
  probe = jax.jit(functools.partial(analysis.hessian_max_eigenvalue, loss_fn), static_argnames="num_iters")
  got = probe(params, jax.random.key(0), num_iters=200)
  np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_mlp_sharpness_matches_dense_second_order_expansion(x64):
  """For small rho, sharpness = rho ||g|| + 0.5 rho^2 u^T H u + O(rho^3)."""
  loss_fn, params = _mlp_problem()
  _, hessian = _dense_hessian(loss_fn, params)
  g = np.asarray(ravel_pytree(jax.grad(loss_fn)(params))[0])
  u = g / np.linalg.norm(g)
  rho = 1e-3
  probe = jax.jit(analysis.sam_sharpness, static_argnums=0)
  second_order = probe(loss_fn, params, rho) - rho * np.linalg.norm(g)
  np.testing.assert_allclose(second_order, 0.5 * rho**2 * u @ hessian @ u, rtol=1e-2)


@pytest.mark.slow  # the full suite only (seconds of compilation)
def test_jit_matches_eager_with_traced_rho_and_both_key_kinds():
  loss_fn, params = _mlp_problem()
  params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  metrics = jax.jit(analysis.sharpness_metrics, static_argnums=(0, 4))
  for key in (jax.random.key(3), jax.random.PRNGKey(3)):
    eager = analysis.sharpness_metrics(loss_fn, params, key, 0.05, 30)
    jitted = metrics(loss_fn, params, key, jnp.float32(0.05), 30)
    assert set(jitted) == {"sam_sharpness", "hessian_max_eigenvalue"}
    for name in eager:
      assert jitted[name].dtype == jnp.float32
      np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-4)


def test_bfloat16_params_give_float32_estimates():
  eigenvalues = [4.0, 1.0, 0.5, 0.2, 0.1, 0.0, -0.2, -0.5]
  loss_fn, params, a, b = _two_leaf_quadratic(eigenvalues, seed=5)
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  eigenvalue = analysis.hessian_max_eigenvalue(loss_fn, params, jax.random.key(0), num_iters=30)
  assert eigenvalue.dtype == jnp.float32
  np.testing.assert_allclose(eigenvalue, 4.0, rtol=3e-2)
  sharpness = analysis.sam_sharpness(loss_fn, params, 0.5)
  flat = np.asarray(ravel_pytree(params)[0], np.float64)
  np.testing.assert_allclose(sharpness, _closed_form_sharpness(a, b, flat, 0.5), rtol=5e-2)


@pytest.mark.parametrize("rho", [-0.1, float("nan")])
def test_bad_rho_raises(rho):
  loss_fn, params, _, _ = _two_leaf_quadratic(EIGENVALUES)
  with pytest.raises(ValueError, match="rho"):
    analysis.sam_sharpness(loss_fn, params, rho)


@pytest.mark.parametrize("num_iters", [0, -3, 2.5])
def test_bad_num_iters_raises(num_iters):
  loss_fn, params, _, _ = _two_leaf_quadratic(EIGENVALUES)
  with pytest.raises(ValueError, match="num_iters"):
    analysis.hessian_max_eigenvalue(loss_fn, params, jax.random.key(0), num_iters=num_iters)
