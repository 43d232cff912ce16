"""What may be chained with msam (README "Use in your own JAX code", rule 2).

Gradient transformations before msam keep `eval_params` exact; a transformation
after it that rescales updates also rescales the perturbation and leaves
`eval_params` off. The latter is a documented limitation, not detected at run
time; the second test pins it so that a change of behaviour is noticed.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import msam_jax

LR, MU, RHO, CLIP = 0.1, 0.9, 0.05, 0.5


def loss(p):
  return 0.5 * jnp.sum(jnp.asarray([1.0, 10.0]) * (p["w"] - jnp.asarray([1.0, -2.0])) ** 2)


def reference_unperturbed(num_steps):
  """The unperturbed MSAM trajectory by hand: gradient at p - c v, clipped, SGD step at p."""
  p, v, c = jnp.zeros(2), jnp.zeros(2), 0.0
  out = []
  for _ in range(num_steps):
    g = jax.grad(loss)({"w": p - c * v})["w"]
    g = g * jnp.minimum(1.0, CLIP / jnp.linalg.norm(g))
    v = MU * v + g
    p = p - LR * v
    c = RHO / (jnp.linalg.norm(v) + 1e-12)
    out.append(p)
  return out


def run(tx, num_steps):
  params, state = {"w": jnp.zeros(2)}, tx.init({"w": jnp.zeros(2)})
  out = []
  for _ in range(num_steps):
    updates, state = tx.update(jax.grad(loss)(params), state, params, value=loss(params))
    params = optax.apply_updates(params, updates)
    out.append(msam_jax.eval_params(params, state)["w"])
  return out


def test_gradient_clipping_before_msam_keeps_eval_params_exact(x64):
  tx = optax.chain(optax.clip_by_global_norm(CLIP), msam_jax.msam(LR, MU, rho=RHO))
  for got, expected in zip(run(tx, 10), reference_unperturbed(10), strict=True):
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_rescaling_after_msam_leaves_eval_params_off(x64):
  """optax.scale(0.5) after msam halves the perturbation and its undoing: the
  unperturbed point is no longer params + c v (documented, not refused)."""
  clipped = optax.chain(optax.clip_by_global_norm(CLIP), msam_jax.msam(LR, MU, rho=RHO))
  halved = optax.chain(optax.clip_by_global_norm(CLIP), msam_jax.msam(2 * LR, MU, rho=RHO),
                       optax.scale(0.5))
  # Same descent (2 LR * 0.5), but the perturbation is halved too: eval_params moves off.
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(run(halved, 10), run(clipped, 10)))
  assert gap > 1e-3
