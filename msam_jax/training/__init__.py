"""Training: train state, loss, jitted steps, mesh, checkpoints and the loop."""
from msam_jax.training.config import ConfigError, base_config, validate
from msam_jax.training.loop import NonFiniteLossError, train_and_evaluate
from msam_jax.training.preemption import Preempted

__all__ = ["ConfigError", "NonFiniteLossError", "Preempted", "base_config", "train_and_evaluate", "validate"]
