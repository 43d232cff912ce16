"""MESA: the loss gains a KL term towards an exponential moving average of the model.

Du, Zhou, Feng, Tan & Zhou, "Sharpness-Aware Training for Free", NeurIPS 2022
(arXiv 2205.14083; code: github.com/AngusDujw/SAF, `MESA_train.py`), the
memory-efficient variant of SAF. As that code does it:

    ema   = decay ema + (1 - decay) model      # after every optimizer step, from step 0
    loss  = CE(f(p; x), y) + weight T^2 KL(softmax(f(ema; x) / T) || softmax(f(p; x) / T))

`f(ema; x)` runs in evaluation mode (running batch-norm statistics, no
dropout) on the same batch, without gradient; the EMA averages the parameters
and the batch-norm statistics alike (timm's `ModelEmaV2`), and starts as the
initial model. The term is on from step `start_step` on (0-based count of the
steps before the current one). For the MSAM family the EMA averages the
*unperturbed* parameters (`msam_jax.eval_params`), the model MSAM evaluates,
not the ascent point the model holds. Cost: one forward pass in evaluation
mode per step (none before `start_step`) and one parameter-sized buffer.
"""

import dataclasses
import math
from typing import Any

import jax

from msam_jax import validation


@dataclasses.dataclass(frozen=True)
class Mesa:
  """MESA's hyper-parameters, as the training step reads them.

  Attributes:
    weight: lambda >= 0, the KL term's weight (the SAF code's `--reinforce`:
      0.3 by default, 0.8 in its ImageNet run).
    decay: the EMA's decay per step, in [0, 1) (0.9998, timm's `--model-ema-decay`).
    temperature: T > 0 (5).
    start_step: the first step (0-based) with the term.
  """

  weight: float
  decay: float = 0.9998
  temperature: float = 5.0
  start_step: int = 0

  def __post_init__(self):
    validation.non_negative("weight", self.weight)
    validation.in_interval("decay", self.decay, 0, 1, low_closed=True, high_closed=False)
    validation.in_interval("temperature", self.temperature, 0, math.inf, low_closed=False, high_closed=False)
    validation.integer("start_step", self.start_step, low=0)


def from_config(config, steps_per_epoch: int) -> Mesa | None:
  """The run's `Mesa`, or None when `config.mesa_weight == 0` (MESA off).

  `config.mesa_start_epoch` epochs (a fraction allowed) run without the term:
  it starts at step `ceil(mesa_start_epoch * steps_per_epoch)`. The SAF code's
  `--kl_start_epoch 5` applies the term while the 0-based epoch is > 5, which
  is `mesa_start_epoch = 6`.
  """
  if config.mesa_weight == 0:
    return None
  return Mesa(
    weight=float(config.mesa_weight),
    decay=float(config.mesa_decay),
    temperature=float(config.mesa_temperature),
    start_step=math.ceil(config.mesa_start_epoch * steps_per_epoch),
  )


def init_ema(params, batch_stats) -> dict[str, Any]:
  """The EMA model at the start: the model's (unperturbed) parameters and batch-norm statistics."""
  return {"params": params, "batch_stats": batch_stats}


def update_ema(ema: dict[str, Any], params, batch_stats, decay: float) -> dict[str, Any]:
  """`decay ema + (1 - decay) new` leaf by leaf, in each leaf's dtype (timm's ModelEmaV2 update)."""
  new = {"params": params, "batch_stats": batch_stats}
  return jax.tree.map(lambda e, m: decay * e + (1.0 - decay) * m, ema, new)
