"""Flax NNX: `nnx.Optimizer` with MSAM, evaluation at the unperturbed point, and SAM.

MSAM is a drop-in optimizer: the model holds the *perturbed* parameters while
training; `msam_jax.eval_params(params, opt_state)` gives the unperturbed ones
for evaluation and export. SAM needs the loss on the current batch: pass
``loss_fn=`` to `optimizer.update` (extra arguments reach the transformation).

    python examples/nnx_msam.py
"""

import jax.numpy as jnp
import optax
from flax import nnx

import msam_jax


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(2, 16, rngs=rngs)
    self.out = nnx.Linear(16, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def two_moons(n: int = 64):
  """A tiny separable 2-class problem."""
  t = jnp.linspace(0, jnp.pi, n // 2)
  x = jnp.concatenate([jnp.stack([jnp.cos(t), jnp.sin(t)], 1), jnp.stack([1 - jnp.cos(t), 0.5 - jnp.sin(t)], 1)])
  return x, jnp.concatenate([jnp.zeros(n // 2, jnp.int32), jnp.ones(n // 2, jnp.int32)])


def per_example_loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y)


@nnx.jit
def msam_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(lambda m: per_example_loss(m, x, y).mean())(model)
  optimizer.update(model, grads, value=loss)  # extra arguments are accepted and ignored
  return loss


@nnx.jit
def sam_step(model, optimizer, x, y):
  """The SAM family takes ``loss_fn(params, indices=None)``: per-example losses at `params`."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, indices=None):
    xs, ys = (x, y) if indices is None else (x[indices], y[indices])
    return per_example_loss(nnx.merge(graphdef, params, rest), xs, ys)

  loss, grads = nnx.value_and_grad(lambda m: per_example_loss(m, x, y).mean())(model)
  optimizer.update(model, grads, loss_fn=loss_fn)
  return loss


def accuracy(model, x, y):
  return float(jnp.mean(jnp.argmax(model(x), -1) == y))


def unperturbed(model, optimizer):
  """A copy of `model` at the unperturbed parameters (for evaluation and export)."""
  clean = nnx.clone(model)
  nnx.update(clean, msam_jax.eval_params(nnx.state(model, nnx.Param), optimizer.opt_state))
  return clean


def main(num_steps: int = 300) -> dict[str, float]:
  x, y = two_moons()
  results = {}
  for name, tx, step in [
    ("msam", msam_jax.msam(0.1, rho=0.3), msam_step),
    ("sam", msam_jax.sam(msam_jax.sgd(0.1), rho=0.05), sam_step),
  ]:
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(num_steps):
      step(model, optimizer, x, y)
    results[name] = accuracy(unperturbed(model, optimizer), x, y)
    print(f"{name}: accuracy at the unperturbed parameters {results[name]:.3f}")
  return results


if __name__ == "__main__":
  main()
