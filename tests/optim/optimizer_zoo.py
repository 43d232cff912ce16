"""Every registered optimizer (`msam_jax.optim.registry`), in the one table the convention tests run over.

A new registry entry joins every battery in `test_conventions.py` with no edit
here. Each entry is ``(constructor, keyword arguments)`` so that the battery can
build it plainly and under `optax.inject_hyperparams`; the settings suit small
deterministic problems (curvature up to ~10, lr 0.02), and rho is small enough
that the perturbation does not hide convergence. A ``"sam"`` entry wraps its
registry base built with the same settings.
"""

import optax

import msam_jax
from msam_jax.optim import registry

LR = 0.02
RHO = 0.01
# The base optimizers' settings: SGD with momentum, AdamW without decay (plain convergence).
BASE_SETTINGS = {"learning_rate": LR, "momentum": 0.9, "weight_decay": 0.0}
# Per-optimizer settings for the small problems: LookSAM refreshes its direction every 2 steps.
SETTINGS = {"looksam": {"k": 2}}


def _entry(name: str):
  entry = registry.get(name)
  if entry.family == "sam":
    kwargs = {"base": registry.build(entry.base, **BASE_SETTINGS)}
  else:
    kwargs = {k: v for k, v in BASE_SETTINGS.items() if k in entry.injected or k in entry.own_options}
  if entry.uses_rho:
    kwargs["rho"] = RHO
  return entry.factory, {**kwargs, **SETTINGS.get(name, {})}


OPTIMIZERS = {
  **{name: _entry(name) for name in registry.names()},
  # Public constructors that are no registry entry of their own: msam_of around optax's Adam.
  "msam_of": (msam_jax.msam_of, {"base": optax.adam(LR), "rho": RHO}),
}

# Optimizers whose parameters are perturbed (`eval_params` undoes it).
MSAM_FAMILY = tuple(name for name in registry.names() if registry.get(name).family == "msam") + ("msam_of",)


def make(name: str):
  fn, kwargs = OPTIMIZERS[name]
  return fn(**kwargs)
