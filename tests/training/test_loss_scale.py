"""Dynamic loss scaling: a float16 run whose gradients underflow trains; overflow skips a step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax import data
from msam_jax.training import loss_scale, steps
from msam_jax.training.train_state import create_train_state

SHRINK = 1e-6  # the backward factor of `_shrink_grad`: float16 cotangents of ~1e-3 become 0
SPEC = data.synthetic.Spec(image_shape=(8, 8, 1), num_classes=10, num_train=1024, num_test=1)


@jax.custom_vjp
def _shrink_grad(x):
  return x


_shrink_grad.defvjp(lambda x: (x, None), lambda _, ct: (ct * SHRINK,))


class _DeepLikeMLP(nn.Module):
  """Only the first layer trains; its gradient passes a 1e-6 backward factor in the
  computation dtype, as a deep float16 network's small gradients would."""

  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(32, dtype=self.dtype, param_dtype=jnp.float32)(x.reshape(x.shape[0], -1))
    h = _shrink_grad(nn.tanh(h))
    projection = np.random.default_rng(0).standard_normal((32, 10)) / np.sqrt(32)
    return (h @ jnp.asarray(projection, self.dtype)).astype(jnp.float32)


def _optimizer(name, lr):
  sgd = lambda: msam_jax.sgd(lr, momentum=0.9)
  return {
    "sgd": sgd,
    "msam": lambda: msam_jax.msam(lr, momentum=0.9, rho=0.3),
    "sam": lambda: msam_jax.sam(sgd(), rho=0.05),
  }[name]()


def _train(optimizer, dtype, scaled, num_steps):
  """(first-layer kernel after one step and at the end, mean loss of the last 5 steps)."""
  tx = _optimizer(optimizer, lr=0.1 / SHRINK)  # the learning rate undoes the backward factor
  if scaled:
    tx = loss_scale.dynamic_loss_scale(tx)
  model = _DeepLikeMLP(dtype)
  state = create_train_state(model, tx, jax.random.key(0), image_shape=SPEC.image_shape)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=0.0))
  batches = data.train_iterator(
    "synthetic", global_batch_size=64, num_devices=1, process_count=1, process_index=0, synthetic=SPEC
  )
  losses, first = [], None
  for i in range(num_steps):
    state, m = step(state, next(batches), jax.random.key(1))
    losses.append(float(m.compute()["loss"]))
    if i == 0:
      first = np.asarray(msam_jax.eval_params(state.params, state.opt_state)["Dense_0"]["kernel"])
  last = np.asarray(msam_jax.eval_params(state.params, state.opt_state)["Dense_0"]["kernel"])
  return first, last, float(np.mean(losses[-5:]))


@pytest.mark.slow  # trains until float16 gradients would underflow
@pytest.mark.parametrize("optimizer", ["sgd", "msam", "sam"])
def test_underflowing_float16_run_trains_with_loss_scaling(optimizer):
  f32_first, _, f32_loss = _train(optimizer, jnp.float32, False, 30)
  plain_first, plain_last, plain_loss = _train(optimizer, jnp.float16, False, 30)
  scaled_first, _, scaled_loss = _train(optimizer, jnp.float16, True, 30)
  init = np.asarray(
    create_train_state(
      _DeepLikeMLP(jnp.float32), optax.identity(), jax.random.key(0), image_shape=SPEC.image_shape
    ).params["Dense_0"]["kernel"]
  )
  # Plain float16: the gradient underflows to exactly zero and nothing trains.
  np.testing.assert_array_equal(plain_first, init)
  np.testing.assert_array_equal(plain_last, init)
  # Scaled: the first step is float32's to float16 precision (SAM: both passes scaled), and it trains.
  np.testing.assert_allclose(
    scaled_first - init, f32_first - init, rtol=0.05, atol=2e-3 * np.abs(f32_first - init).max()
  )
  assert scaled_loss < plain_loss - 0.3 and scaled_loss == pytest.approx(f32_loss, abs=0.1)


def test_overflow_skips_the_step_and_lowers_the_scale_then_it_grows():
  tx = loss_scale.dynamic_loss_scale(msam_jax.sgd(0.1, momentum=0.9), initial_scale=8.0, period=2)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  good = {"w": jnp.array([1.0, 2.0, 3.0])}
  updates, state = tx.update(good, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * good["w"])
  assert (float(state.scale), int(state.good_steps)) == (8.0, 1)
  kept = state.inner_state
  updates, state = tx.update({"w": jnp.array([1.0, jnp.inf, 0.0])}, state, params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  assert (float(state.scale), int(state.good_steps)) == (4.0, 0)
  jax.tree.map(np.testing.assert_array_equal, state.inner_state, kept)
  for _ in range(2):
    _, state = tx.update(good, state, params)
  assert (float(state.scale), int(state.good_steps)) == (8.0, 0)
  for name, bad, requirement in (
    ("initial_scale", 0.5, ">= 1"),
    ("initial_scale", "8", ">= 1"),
    ("factor", 1.0, "> 1"),
    ("factor", True, "> 1"),
  ):
    with pytest.raises(ValueError, match=rf"^{name} must be a number {requirement}, got {bad!r}$"):
      loss_scale.dynamic_loss_scale(msam_jax.sgd(0.1), **{name: bad})
  for bad in (0, True, 2.5, "2000"):
    with pytest.raises(ValueError, match=r"period must be an integer >= 1"):
      loss_scale.dynamic_loss_scale(msam_jax.sgd(0.1), period=bad)


def test_skipped_steps_advance_the_schedules_but_not_the_optimizer_state():
  """Schedules follow the training step (as torch's GradScaler loop steps its
  scheduler on skipped steps); momentum and rho-free state stay as they were."""
  schedule = lambda count: 0.1 * (count + 1.0)
  inner = optax.inject_hyperparams(msam_jax.sam)(
    base=optax.inject_hyperparams(msam_jax.sgd)(learning_rate=schedule, momentum=0.9), rho=schedule
  )
  tx = loss_scale.dynamic_loss_scale(inner, initial_scale=8.0)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  loss_fn = lambda p, indices=None: jnp.atleast_1d(jnp.sum(p["w"] ** 2))
  good, bad = {"w": 2 * params["w"]}, {"w": jnp.array([1.0, jnp.inf, 0.0])}
  state = tx.init(params)
  _, state = tx.update(good, state, params, loss_fn=loss_fn)
  kept = state.inner_state
  for _ in range(2):  # two skipped steps
    updates, state = tx.update(bad, state, params, loss_fn=loss_fn)
    np.testing.assert_array_equal(updates["w"], 0.0)
  # Counts of both injected schedules at the training step (3), the optimizers' own state kept.
  assert int(state.inner_state.count) == int(state.inner_state.inner_state.base_state.count) == 3
  assert int(state.inner_state.inner_state.count) == int(kept.inner_state.count) == 1
  jax.tree.map(
    np.testing.assert_array_equal,
    state.inner_state.inner_state.base_state.inner_state,
    kept.inner_state.base_state.inner_state,
  )
  # The next (finite) step uses the schedules' values at step 3.
  _, state = tx.update(good, state, params, loss_fn=loss_fn)
  hyper = msam_jax.optim.current_hyperparams(state)
  np.testing.assert_allclose([hyper["rho"], hyper["learning_rate"]], [schedule(3)] * 2, rtol=1e-6)


def test_scaled_backward_keeps_values_and_gradients():
  loss_fn = lambda p, k: jnp.sin(p * k) ** 2
  scaled = loss_scale.scaled_backward(loss_fn, jnp.float32(1024.0))
  p = jnp.array([0.3, -1.2])
  np.testing.assert_allclose(scaled(p, 2.0), loss_fn(p, 2.0), rtol=1e-6)
  np.testing.assert_allclose(
    jax.grad(lambda q: scaled(q, 2.0).sum())(p), jax.grad(lambda q: loss_fn(q, 2.0).sum())(p), rtol=1e-6
  )
  # The cotangent inside is scaled: a float16 backward factor no longer underflows.
  shrinking = lambda p: _shrink_grad(p.astype(jnp.float16) * 1e-3).astype(jnp.float32).sum()
  assert float(jnp.abs(jax.grad(shrinking)(p)).max()) == 0.0
  assert float(jnp.abs(jax.grad(loss_scale.scaled_backward(shrinking, jnp.float32(2.0**15)))(p)).max()) > 0
