"""Training: train state, loss, jitted steps, mesh, checkpoints and the loop.

The config helpers import neither TensorFlow nor jax's backends, so config
files (`from msam_jax.training import base_config`) and the command line's
validation stay fast; the loop and what it needs load on first use.
"""

from msam_jax._extras import require

require("training")

from msam_jax.training.config import (
  ConfigError,
  base_config,
  resolve,
  set_model,
  set_optimizer,
  validate,
  validate_fields,
)

_LAZY = {
  "NonFiniteLossError": "msam_jax.training.loop",
  "train_and_evaluate": "msam_jax.training.loop",
  "RunMismatchError": "msam_jax.training.run_record",
  "WorkdirError": "msam_jax.training.run_record",
  "CheckpointError": "msam_jax.training.checkpoint",
  "load_for_eval": "msam_jax.training.evaluated_model",
  "Preempted": "msam_jax.training.preemption",
}

__all__ = [
  "CheckpointError",
  "ConfigError",
  "NonFiniteLossError",
  "Preempted",
  "RunMismatchError",
  "WorkdirError",
  "base_config",
  "load_for_eval",
  "resolve",
  "set_model",
  "set_optimizer",
  "train_and_evaluate",
  "validate",
  "validate_fields",
]


def __getattr__(name):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'msam_jax.training' has no attribute {name!r}")
