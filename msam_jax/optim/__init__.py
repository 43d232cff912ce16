"""Optimizers of Momentum-SAM and its baselines as optax transformations.

All are `optax.GradientTransformationExtraArgs` whose `update` ignores extra
arguments it does not use, so one training step can pass ``loss_fn=`` to any.

* `sgd`, `adamw`: the original's baselines.
* `msam`, `adamw_msam`: Momentum-SAM; the model holds perturbed parameters,
  `eval_params(params, opt_state)` returns the unperturbed ones.
* `msam_of`: Momentum-SAM around any optax optimizer that keeps a momentum
  (optax.lion, adam, contrib.muon, ...), found by `momentum.find_momentum`.
* `sam`, `asam`, `gsam`, `esam`, `looksam`, `rst`: wrap any base; `update` needs ``loss_fn=``
  (and optionally takes ``losses=``) and forwards other extra arguments to the base;
  ``second_gradient=`` (a Python bool) fixes whether an update takes the second
  gradient, for a loop that decides on the host (`rst_coin`: RST's draws there).
* `needs_loss_fn`, `perturbs_params`, `current_hyperparams`: what a training loop
  asks of any of them.
* `registry`: every optimizer by name, its family and the config fields it reads.
* `all_but_biases`: the parameter mask of SamsungLabs/ASAM for Flax trees.
* `schedules`: the original's learning-rate and rho schedules, and GSAM's rho.
"""

from msam_jax.optim import momentum, registry, schedules
from msam_jax.optim.asam import all_but_biases, asam
from msam_jax.optim.baselines import AdamWState, adamw, sgd
from msam_jax.optim.esam import EsamState, esam
from msam_jax.optim.gsam import gsam
from msam_jax.optim.looksam import LookSamState, looksam
from msam_jax.optim.msam import AdamWMsamState, MsamOfState, MsamState, adamw_msam, eval_params, msam, msam_of
from msam_jax.optim.rst import RstState, rst, rst_coin
from msam_jax.optim.sam import SamState, ascent_perturbation, sam
from msam_jax.optim.state_utils import current_hyperparams, needs_loss_fn, perturbs_params

__all__ = [
  "AdamWMsamState",
  "AdamWState",
  "EsamState",
  "LookSamState",
  "MsamOfState",
  "MsamState",
  "RstState",
  "SamState",
  "adamw",
  "adamw_msam",
  "all_but_biases",
  "asam",
  "ascent_perturbation",
  "current_hyperparams",
  "esam",
  "eval_params",
  "gsam",
  "looksam",
  "momentum",
  "msam",
  "msam_of",
  "needs_loss_fn",
  "perturbs_params",
  "registry",
  "rst",
  "rst_coin",
  "sam",
  "schedules",
  "sgd",
]
