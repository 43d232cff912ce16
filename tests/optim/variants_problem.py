"""The JAX side of the variants oracle's problem: loss_fn, a training driver, comparisons."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import variants_oracle as oracle


def per_example_loss(params, x, y):
  h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
  z = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
  return -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1)[:, 0]


def make_loss_fn(x, y, log=None):
  """`loss_fn(params, indices=None)`; `log` (a list) receives each evaluation's indices at run time."""

  def loss_fn(params, indices=None):
    if log is not None:
      if indices is None:
        jax.debug.callback(lambda: log.append(None))
      else:
        jax.debug.callback(lambda i: log.append(np.asarray(i)), indices)
    if indices is None:
      return per_example_loss(params, x, y)
    return per_example_loss(params, x[indices], y[indices])

  return loss_fn


def make_step(tx, log=None, pass_grads=True):
  def step(params, state, x, y):
    loss_fn = make_loss_fn(x, y, log)
    grads = jax.grad(lambda p: jnp.mean(loss_fn(p)))(params) if pass_grads else None
    updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
    return optax.apply_updates(params, updates), state

  return step


def run(tx, steps=oracle.STEPS, *, jit=True, dtype=jnp.float64, seed=0):
  """Params (Flax layout) after each step on the oracle's batches."""
  params0, xs, ys = oracle.problem(seed)
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), oracle.to_flax(params0))
  state = tx.init(params)
  step = jax.jit(make_step(tx)) if jit else make_step(tx)
  out = []
  for t in range(steps):
    params, state = step(params, state, jnp.asarray(xs[t], dtype), jnp.asarray(ys[t]))
    out.append(params)
  return out


def run_base(tx, steps=oracle.STEPS):
  """`tx` alone (no loss_fn) stepped with the first-pass gradient, as `run` does."""
  params0, xs, ys = oracle.problem()
  params = jax.tree.map(jnp.asarray, oracle.to_flax(params0))
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(lambda p: jnp.mean(per_example_loss(p, x, y)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  out = []
  for t in range(steps):
    params, state = step(params, state, jnp.asarray(xs[t]), jnp.asarray(ys[t]))
    out.append(params)
  return out


def assert_trajectory_close(got, expected, rtol=1e-10):
  """Flax-layout params vs the oracle's torch-layout ones, after every step."""
  assert len(got) == len(expected)
  for t, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
    g = oracle.from_flax(g)
    for name in oracle.NAMES:
      scale = np.max(np.abs(e[name]))
      np.testing.assert_allclose(g[name], e[name], rtol=rtol, atol=rtol * 1e-3 * scale, err_msg=f"step {t} {name}")


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
