"""docs/choosing.md's migration from `optax.contrib.sam`: the same SAM run, and the differences it names.

float64 on a toy regression with SGD with momentum as the base: `msam_jax.sam`
equals optax's SAM in both of its modes (opaque: one update per step calling
``grad_fn(params, i)``; transparent: an ascent update, then a descent update)
to round-off; only the normalisation's guard differs (a zero gradient).
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax.optim.numerics import NORM_EPS

sam_module = importlib.import_module("msam_jax.optim.sam")  # the module: msam_jax.optim.sam is the function

RHO, STEPS = 0.05, 25


def toy():
  x = jax.random.normal(jax.random.key(0), (32, 3))
  y = jnp.sin(x @ jnp.array([1.0, -2.0, 0.5]))

  def losses(params, indices=None):
    xs, ys = (x, y) if indices is None else (x[indices], y[indices])
    return (jnp.tanh(xs @ params["w"] + params["b"]) - ys) ** 2

  params = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array(0.0)}
  return params, losses, lambda p: losses(p).mean()


def run(tx, params, loss, num_updates, **extra):
  state = tx.init(params)
  for _ in range(num_updates):
    updates, state = tx.update(jax.grad(loss)(params), state, params, **extra)
    params = optax.apply_updates(params, updates)
  return params


def optax_sam(**kwargs):
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(RHO))
  return optax.contrib.sam(optax.sgd(0.1, momentum=0.9), adversary, **kwargs)


@pytest.mark.parametrize("opaque", [True, False])
@pytest.mark.parametrize("guard", [NORM_EPS, 0.0])
def test_msam_jax_sam_is_optax_contrib_sam(x64, monkeypatch, opaque, guard):
  """Equal to round-off once our 1e-12 guard in rho / (||g|| + 1e-12) is taken out; to 1e-9 with it."""
  monkeypatch.setattr(sam_module, "NORM_EPS", guard)
  params, losses, loss = toy()
  ours = run(msam_jax.sam(optax.sgd(0.1, momentum=0.9), rho=RHO), params, loss, STEPS, loss_fn=losses)
  if opaque:  # grad_fn(params, i): the gradient at the adversarial point of step i
    theirs = run(optax_sam(opaque_mode=True), params, loss, STEPS, grad_fn=lambda q, i: jax.grad(loss)(q))
  else:  # two updates per SAM step, the loop's own gradient serving as the second pass
    theirs = run(optax_sam(), params, loss, 2 * STEPS)
  moved = float(optax.tree.norm(jax.tree.map(jnp.subtract, ours, params)))
  assert moved > 0.1  # a real run, not a fixed point
  rtol = 1e-9 if guard else 1e-14
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol), ours, theirs)


def test_msam_jax_grad_fn_is_the_whole_batch_gradient(x64):
  """Our optional grad_fn takes params only (optax's takes (params, i)) and replaces loss_fn's gradient."""
  params, losses, loss = toy()
  tx = msam_jax.sam(optax.sgd(0.1, momentum=0.9), rho=RHO)
  with_grad_fn = run(tx, params, loss, 5, loss_fn=losses, grad_fn=jax.grad(loss))
  jax.tree.map(np.testing.assert_array_equal, with_grad_fn, run(tx, params, loss, 5, loss_fn=losses))


def test_a_zero_gradient_is_nan_in_optax_and_no_perturbation_here():
  params = {"w": jnp.zeros(3)}
  flat = lambda p, indices=None: jnp.sum(p["w"] ** 2, keepdims=True)  # gradient 0 at w = 0
  zero = jax.grad(lambda p: flat(p).mean())(params)
  tx = optax_sam(opaque_mode=True)
  theirs, _ = tx.update(zero, tx.init(params), params, grad_fn=lambda q, i: jax.grad(lambda p: flat(p).mean())(q))
  assert np.isnan(theirs["w"]).all()
  tx = msam_jax.sam(optax.sgd(0.1, momentum=0.9), rho=RHO)
  ours, _ = tx.update(zero, tx.init(params), params, loss_fn=flat)
  np.testing.assert_array_equal(ours["w"], 0.0)
