"""Everything a training run carries from step to step, as one pytree."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """The checkpointed state of a run.

  `params` are what the model holds during training: for the MSAM family the
  perturbed point `p - c*v`; `msam_jax.eval_params(params, opt_state)` gives the
  unperturbed one. The data iterator's position is `step` itself (the input
  pipelines are step-indexed), so no iterator state is stored beside it.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


def create_train_state(model, tx, rng: jax.Array, image_shape, dtype=jnp.float32) -> TrainState:
  """Initialises the model on a dummy batch and the optimizer on its params."""
  dummy = jnp.zeros((1, *image_shape), dtype)
  variables = model.init({"params": rng, "dropout": rng}, dummy, train=False)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
  )
