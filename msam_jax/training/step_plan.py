"""How a training step runs, decided once from the config and read everywhere else.

The optimizer factory (`optimizer.build_optimizer`), the step
(`steps.train_step`), its metrics (`steps.metrics_collection`) and the loop all
read one `StepPlan`, so they cannot disagree: per-device m-sharpness builds
the optimizer with ``group_size, axis_name`` *and* runs its update under
`shard_map` *and* drops the first-pass gradient norm; float16 wraps the
optimizer in `loss_scale.dynamic_loss_scale`. `config.validate` has already
refused the combinations the step does not support.
"""

import dataclasses

import ml_collections

from msam_jax.training.mesh import DATA_AXIS


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """Attributes:
  grad_accum_steps: micro-batches per step (`accumulation.py`); 1 = none.
  loss_scale: float16: a dynamic loss scale wraps the optimizer (`loss_scale.py`).
  group_size: per-device m-sharpness, examples per perturbation; 0 = whole batch.
  """

  grad_accum_steps: int = 1
  loss_scale: bool = False
  group_size: int = 0

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> "StepPlan":
    return cls(
      grad_accum_steps=config.grad_accum_steps,
      loss_scale=config.dtype == "float16",
      group_size=config.sam_group_size,
    )

  @property
  def per_device_groups(self) -> bool:
    """The optimizer's update runs per device under `shard_map` (`steps.train_step`)."""
    return self.group_size > 0

  @property
  def grad_norm(self) -> bool:
    """Whether the step reports a first-pass gradient norm (per-device groups compute none)."""
    return not self.per_device_groups

  @property
  def optimizer_options(self) -> dict:
    """What the SAM-family factory takes for per-device m-sharpness (nothing otherwise)."""
    return {"group_size": self.group_size, "axis_name": DATA_AXIS} if self.per_device_groups else {}
