"""msam-jax: Momentum-SAM and the SAM family for JAX/optax.

The optimizers are re-exported here (``msam_jax.msam(...)``); see
`msam_jax.optim`. This module stays light: it imports jax and optax only,
never TensorFlow or Flax.
"""

from msam_jax.optim import (
  adamw,
  adamw_msam,
  asam,
  esam,
  eval_params,
  gsam,
  looksam,
  msam,
  msam_of,
  rst,
  sam,
  schedules,
  sgd,
)

__all__ = [
  "adamw",
  "adamw_msam",
  "asam",
  "esam",
  "eval_params",
  "gsam",
  "looksam",
  "msam",
  "msam_of",
  "rst",
  "sam",
  "schedules",
  "sgd",
]

# The heavier subpackages (Flax models, TensorFlow input pipelines, training)
# load on first attribute access, so `import msam_jax` stays cheap.
_SUBPACKAGES = ("analysis", "data", "models", "optim", "training")


def __getattr__(name):
  if name in _SUBPACKAGES:
    import importlib

    return importlib.import_module(f"msam_jax.{name}")
  raise AttributeError(f"module 'msam_jax' has no attribute {name!r}")
