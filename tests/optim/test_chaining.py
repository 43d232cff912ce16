"""What may be chained with msam (docs/getting_started.md, "Use in your own JAX code", rule 2).

Gradient transformations before msam keep `eval_params` exact; a transformation
after it would also rescale the perturbation, so `eval_params` refuses such a
chain with a clear error instead of returning wrong parameters.
"""

import pytest
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


def test_rescaling_after_msam_would_leave_eval_params_off(x64):
  """Why the chain is refused: optax.scale(0.5) after msam halves the perturbation
  and its undoing, so params + c v is no longer the unperturbed point."""

  def run_unchecked(tx, num_steps):
    params, state = {"w": jnp.zeros(2)}, tx.init({"w": jnp.zeros(2)})
    out = []
    for _ in range(num_steps):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
      msam_state = state[1]
      out.append(params["w"] + msam_state.offset_scale * msam_state.momentum["w"])
    return out

  clipped = optax.chain(optax.clip_by_global_norm(CLIP), msam_jax.msam(LR, MU, rho=RHO))
  halved = optax.chain(optax.clip_by_global_norm(CLIP), msam_jax.msam(2 * LR, MU, rho=RHO), optax.scale(0.5))
  np.testing.assert_allclose(run_unchecked(clipped, 10), reference_unperturbed(10), rtol=1e-12)
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(run_unchecked(halved, 10), reference_unperturbed(10)))
  assert gap > 1e-3


@pytest.mark.parametrize(
  "tx",
  [
    optax.chain(msam_jax.msam(LR, MU, rho=RHO), optax.scale(0.5)),
    optax.chain(optax.clip_by_global_norm(CLIP), msam_jax.adamw_msam(LR, rho=RHO), optax.contrib.reduce_on_plateau()),
    optax.chain(optax.chain(msam_jax.msam(LR, MU, rho=RHO), optax.clip(1.0))),
    optax.MultiSteps(optax.chain(msam_jax.msam(LR, MU, rho=RHO), optax.scale(0.5)), 2),
    optax.chain(optax.inject_hyperparams(msam_jax.msam)(learning_rate=LR, rho=RHO), optax.scale(0.5)),
  ],
  ids=["scale", "reduce_on_plateau", "nested_chain", "inside_multisteps", "injected"],
)
def test_a_transformation_after_msam_is_refused(tx):
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  updates, state = tx.update(jax.grad(loss)(params), state, params, value=loss(params))
  with pytest.raises(ValueError, match=r"msam/adamw_msam is member \d of an optax.chain .* follow"):
    msam_jax.eval_params(optax.apply_updates(params, updates), state)


@pytest.mark.parametrize(
  "tx",
  [
    optax.chain(optax.clip_by_global_norm(CLIP), msam_jax.msam(LR, MU, rho=RHO)),
    optax.chain(optax.chain(optax.clip(1.0), msam_jax.msam(LR, MU, rho=RHO))),
    optax.chain(optax.clip(1.0), optax.MultiSteps(msam_jax.msam(LR, MU, rho=RHO), 2).gradient_transformation()),
    optax.multi_transform({"a": msam_jax.msam(LR, MU, rho=RHO), "b": optax.sgd(LR)}, {"w": "a", "v": "b"}),
  ],
  ids=["clip_first", "nested_clip_first", "multisteps_last", "multi_transform"],
)
def test_msam_last_in_its_chain_is_accepted(tx):
  params = {"w": jnp.zeros(2), "v": jnp.ones(2)}
  state = tx.init(params)
  grads = {"w": jnp.ones(2), "v": jnp.ones(2)}
  updates, state = tx.update(grads, state, params)
  msam_jax.eval_params(optax.apply_updates(params, updates), state)  # no error
