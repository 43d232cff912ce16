"""A plain optax loop: gradient clipping, accumulation, a rho schedule, checkpoints.

* ``optax.chain(optax.clip_by_global_norm(1.0), msam(...))``: transformations of
  the *gradient* go before `msam`; nothing that rescales updates may follow it
  (eval_params would be wrong).
* `optax.MultiSteps(tx, k)` accumulates k micro-batch gradients; the parameters
  (and so the perturbed point) do not move in between, so it equals one step on
  the mean gradient.
* rho (like the learning rate) takes an optax schedule.
* The optimizer state is a pytree: orbax saves and restores it like parameters.

    python examples/optax_loop.py
"""

import os
import tempfile

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

import msam_jax


def problem(n: int = 64):
  """Least squares with an exact solution; `loss(params, batch)` is the mean loss."""
  x = jax.random.normal(jax.random.key(0), (n, 4))
  w = jnp.asarray([1.0, -2.0, 0.5, 3.0])
  return x, x @ w


def loss(params, x, y):
  return 0.5 * jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def make_optimizer(steps_per_epoch: int, accumulate: int):
  rho = msam_jax.schedules.rho_start_ramp(0.1, steps_per_epoch=steps_per_epoch, ramp_epochs=2)
  tx = optax.chain(optax.clip_by_global_norm(1.0), msam_jax.msam(0.05, momentum=0.9, rho=rho))
  return optax.MultiSteps(tx, every_k_schedule=accumulate)


def train(params, opt_state, tx, x, y, num_steps, micro_batch):
  @jax.jit
  def step(params, opt_state, xb, yb):
    grads = jax.grad(loss)(params, xb, yb)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  n = x.shape[0] // micro_batch
  for i in range(num_steps):
    j = i % n
    params, opt_state = step(
      params, opt_state, x[j * micro_batch : (j + 1) * micro_batch], y[j * micro_batch : (j + 1) * micro_batch]
    )
  return params, opt_state


def save_and_restore(directory, params, opt_state):
  """Both trees through orbax; `opt_state` restores into the structure of a fresh init."""
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(os.path.abspath(directory), "optimizer_checkpoint")
  checkpointer.save(path, {"params": params, "opt_state": opt_state})
  checkpointer.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state})
  restored = checkpointer.restore(path, target)
  checkpointer.close()
  return restored["params"], restored["opt_state"]


def main(num_steps: int = 400, workdir: str | None = None) -> float:
  x, y = problem()
  micro_batch, accumulate = 16, 2
  tx = make_optimizer(steps_per_epoch=x.shape[0] // (micro_batch * accumulate), accumulate=accumulate)
  params = {"w": jnp.zeros(4), "b": jnp.zeros([])}
  opt_state = tx.init(params)
  params, opt_state = train(params, opt_state, tx, x, y, num_steps // 2, micro_batch)
  with tempfile.TemporaryDirectory() as tmp:
    params, opt_state = save_and_restore(workdir or tmp, params, opt_state)
  params, opt_state = train(params, opt_state, tx, x, y, num_steps - num_steps // 2, micro_batch)
  final = float(loss(msam_jax.eval_params(params, opt_state), x, y))
  print(f"loss at the unperturbed parameters: {final:.2e}")
  return final


if __name__ == "__main__":
  main()
