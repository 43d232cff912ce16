"""`flax.training.train_state.TrainState` with MSAM (drop-in) and SAM (pass `loss_fn`).

MSAM needs nothing but the gradient: `state.apply_gradients(grads=grads)` works
as for any optax optimizer. `apply_gradients` does not pass extra arguments to
`tx.update`, so the SAM family (`sam`, `esam`, `looksam`) calls `tx.update`
itself with ``loss_fn=`` and stores the result with `state.replace`. Evaluate
at `msam_jax.eval_params(state.params, state.opt_state)` (a no-op for SAM).

    python examples/train_state.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import msam_jax


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(nn.relu(nn.Dense(16)(x)))


def data(n: int = 64):
  x = jax.random.normal(jax.random.key(0), (n, 2))
  return x, (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)  # XOR of the signs


def per_example_loss(apply_fn, params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply_fn({"params": params}, x), y)


@jax.jit
def msam_step(state, x, y):
  grads = jax.grad(lambda p: per_example_loss(state.apply_fn, p, x, y).mean())(state.params)
  return state.apply_gradients(grads=grads)  # drop-in: nothing else changes


@jax.jit
def sam_step(state, x, y):
  def loss_fn(params, indices=None):  # per-example losses at `params` (indices: a sub-batch)
    xs, ys = (x, y) if indices is None else (x[indices], y[indices])
    return per_example_loss(state.apply_fn, params, xs, ys)

  losses, grads = jax.value_and_grad(lambda p: loss_fn(p).mean())(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, loss_fn=loss_fn, losses=losses)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def accuracy(state, x, y):
  params = msam_jax.eval_params(state.params, state.opt_state)  # the unperturbed point
  return float(jnp.mean(jnp.argmax(state.apply_fn({"params": params}, x), -1) == y))


def main(num_steps: int = 400) -> dict[str, float]:
  x, y = data()
  model = MLP()
  params = model.init(jax.random.key(1), x)["params"]
  results = {}
  for name, tx, step in [
    ("msam", msam_jax.msam(0.1, rho=0.3), msam_step),
    ("sam", msam_jax.sam(msam_jax.sgd(0.1), rho=0.05), sam_step),
  ]:
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    for _ in range(num_steps):
      state = step(state, x, y)
    results[name] = accuracy(state, x, y)
    print(f"{name}: accuracy at the unperturbed parameters {results[name]:.3f}")
  return results


if __name__ == "__main__":
  main()
