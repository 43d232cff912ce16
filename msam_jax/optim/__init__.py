"""Optimizers of Momentum-SAM and its baselines as optax transformations.

* `sgd`, `adamw`: the original's baselines (`optax.GradientTransformation`).
* `msam`, `adamw_msam`: Momentum-SAM; the model holds perturbed parameters,
  `eval_params(params, opt_state)` returns the unperturbed ones.
* `sam`, `esam`, `looksam`: wrap any base; `optax.GradientTransformationExtraArgs`
  whose `update` takes ``loss_fn=`` (and optionally ``losses=``).
* `needs_loss_fn`, `perturbs_params`, `current_hyperparams`: what a training loop
  asks of any of them.
* `registry`: every optimizer by name, its family and the config fields it reads.
* `schedules`: the original's learning-rate and rho schedules.
"""
from msam_jax.optim import registry, schedules
from msam_jax.optim.base import AdamWState, adamw, sgd
from msam_jax.optim.esam import EsamState, esam
from msam_jax.optim.looksam import LookSamState, looksam
from msam_jax.optim.msam import AdamWMsamState, MsamState, adamw_msam, eval_params, msam
from msam_jax.optim.sam import SamState, ascent_perturbation, sam
from msam_jax.optim.state_utils import current_hyperparams, needs_loss_fn, perturbs_params

__all__ = [
    "AdamWMsamState", "AdamWState", "EsamState", "LookSamState", "MsamState", "SamState",
    "adamw", "adamw_msam", "ascent_perturbation", "current_hyperparams", "esam",
    "eval_params", "looksam", "msam", "needs_loss_fn", "perturbs_params", "registry", "sam",
    "schedules", "sgd",
]
