"""msam-jax: Momentum-SAM and the SAM family for JAX/optax.

The optimizers are re-exported here (``msam_jax.msam(...)``); see
`msam_jax.optim`. This module stays light: it imports jax and optax only,
never TensorFlow or Flax.
"""
from msam_jax.optim import (adamw, adamw_msam, esam, eval_params, looksam, msam, sam,
                            schedules, sgd)

__all__ = ["adamw", "adamw_msam", "esam", "eval_params", "looksam", "msam", "sam",
           "schedules", "sgd"]

# --- Lazy access to msam_jax.models / msam_jax.data: the lead adds it here. ---
