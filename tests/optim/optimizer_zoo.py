"""Every optimizer the package ships, in the one list the convention tests run over.

A new optimizer joins every battery in `test_conventions.py` by getting an
entry here (once `msam_jax/optim/registry.py` exists, this list should be read
from it). Each entry is ``(constructor, keyword arguments)`` so that the
battery can build it plainly and under `optax.inject_hyperparams`; the settings
suit small deterministic problems (curvature up to ~10, lr 0.02), and rho is
small enough that the perturbation does not hide convergence.
"""

import optax

import msam_jax

LR = 0.02
RHO = 0.01


def _sgd():
  return msam_jax.sgd(LR, momentum=0.9)


OPTIMIZERS = {
  "sgd": (msam_jax.sgd, {"learning_rate": LR, "momentum": 0.9}),
  "msam": (msam_jax.msam, {"learning_rate": LR, "momentum": 0.9, "rho": RHO}),
  "adamw": (msam_jax.adamw, {"learning_rate": LR, "weight_decay": 0.0}),
  "adamw_msam": (msam_jax.adamw_msam, {"learning_rate": LR, "weight_decay": 0.0, "rho": RHO}),
  "sam": (msam_jax.sam, {"base": _sgd(), "rho": RHO}),
  "esam": (msam_jax.esam, {"base": _sgd(), "rho": RHO}),
  "looksam": (msam_jax.looksam, {"base": _sgd(), "rho": RHO, "k": 2}),
  "msam_of": (msam_jax.msam_of, {"base": optax.adam(LR), "rho": RHO}),
  "rst": (msam_jax.rst, {"base": _sgd(), "rho": RHO, "p": 0.5}),
}

# Optimizers whose parameters are perturbed (`eval_params` undoes it).
MSAM_FAMILY = ("msam", "adamw_msam", "msam_of")


def make(name: str):
  fn, kwargs = OPTIMIZERS[name]
  return fn(**kwargs)
