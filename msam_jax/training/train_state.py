"""Everything a training run carries from step to step, as one pytree."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

import msam_jax
from msam_jax.training import mesa as mesa_lib


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


@flax.struct.dataclass
class MesaTrainState(TrainState):
  """A run's state with MESA (`mesa.py`): also `ema`, the moving average of the model.

  `ema = {"params": ..., "batch_stats": ...}`, laid out like `params` and
  `batch_stats`. A separate class so that a run without MESA carries nothing of
  it and its checkpoints keep their layout.
  """

  ema: Any


def create_train_state(model, tx, rng: jax.Array, image_shape, dtype=jnp.float32, *, mesa: bool = False) -> TrainState:
  """Initialises the model on a dummy batch and the optimizer on its params.

  `mesa`: also MESA's EMA of the model, starting as the unperturbed model.
  """
  dummy = jnp.zeros((1, *image_shape), dtype)
  variables = model.init({"params": rng, "dropout": rng}, dummy, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  opt_state = tx.init(params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=opt_state)
  if not mesa:
    return state
  ema = mesa_lib.init_ema(msam_jax.eval_params(params, opt_state), batch_stats)
  return MesaTrainState(**vars(state), ema=ema)
