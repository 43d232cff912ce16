"""Questions a training loop asks about any optimizer, answered from its state.

Wrappers such as `optax.inject_hyperparams`, `optax.chain` or
`optax.MultiSteps` hide which transformation they hold, but its state stays
in the state tree. Looking there lets one training step serve every optimizer
without branching on names.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from msam_jax.optim.sam import SamState

_INJECT_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
# A probe for abstract initialisation: enough for transformations that accept any params.
_PROBE_PARAMS = {"probe": jax.ShapeDtypeStruct((2,), jnp.float32)}


def _sam_family_states() -> tuple[type, ...]:
  # Imported here so that each optimizer module only depends on sam.py.
  from msam_jax.optim.esam import EsamState
  from msam_jax.optim.looksam import LookSamState
  from msam_jax.optim.rst import RstState

  return (SamState, EsamState, LookSamState, RstState)


def _find(tree, types) -> list[Any]:
  is_match = lambda x: isinstance(x, types)
  return [x for x in jax.tree.leaves(tree, is_leaf=is_match) if is_match(x)]


def needs_loss_fn(tx_or_state, params=None) -> bool:
  """Whether `update` wants ``loss_fn=`` (and ``losses=``): the SAM family does.

  A training step need not ask: every optimizer here accepts and ignores extra
  arguments, so passing ``loss_fn=`` always is fine. This answers "does the
  step have to build one" (e.g. to pick `TrainState.apply_gradients` or not).

  Args:
    tx_or_state: an optax transformation, however wrapped (`optax.MultiSteps`
      included, which is not a `GradientTransformation`), or its state.
    params: params (or `jax.ShapeDtypeStruct`s) to initialise `tx` with,
      abstractly; by default a small probe, which serves every transformation
      that accepts any parameter tree.

  Returns:
    True when a `sam`, `esam`, `looksam` or `rst` state is part of the state tree.
    Costs no computation (`jax.eval_shape`); usable inside `jax.jit`.
  """
  state = tx_or_state
  if isinstance(tx_or_state, optax.MultiSteps):
    tx_or_state = tx_or_state.gradient_transformation()
  if isinstance(tx_or_state, optax.GradientTransformation):
    try:
      state = jax.eval_shape(tx_or_state.init, _PROBE_PARAMS if params is None else params)
    except Exception as error:  # e.g. a mask or label tree that needs the real params
      if params is not None:
        raise
      raise ValueError(
        "needs_loss_fn could not initialise the transformation on a probe "
        "parameter tree; pass params=(the model's params)"
      ) from error
  return bool(_find(state, _sam_family_states()))


def current_hyperparams(opt_state) -> dict[str, jax.Array]:
  """The hyper-parameters in force, from every `optax.inject_hyperparams` in the state.

  Returns a flat dict, e.g. ``{"rho": ..., "learning_rate": ..., "momentum": ...}``
  for ``inject_hyperparams(sam)(base=inject_hyperparams(sgd)(...), rho=...)``.
  The values are the ones the most recent update used (at initialisation: the
  first update's). Where several wrappers name the same hyper-parameter the
  outermost (then first in tree order) wins. Empty when nothing is injected.
  """
  found: dict[str, jax.Array] = {}

  def visit(tree):
    for state in _find(tree, _INJECT_STATES):
      for name, value in state.hyperparams.items():
        found.setdefault(name, value)
      visit(state.inner_state)

  visit(opt_state)
  return found


def _msam_family_states() -> tuple[type, ...]:
  from msam_jax.optim.msam import AdamWMsamState, MsamOfState, MsamState

  return (MsamState, AdamWMsamState, MsamOfState)


def perturbs_params(opt_state) -> bool:
  """Whether the parameters this optimizer returns are perturbed: the MSAM family's are.

  True when an `msam`, `adamw_msam` or `msam_of` state is part of the state tree (however
  wrapped; abstract states from `jax.eval_shape` too). Then `eval_params` gives
  the parameters to evaluate, and a batch-norm model's running statistics,
  collected at the perturbed point, are worth recomputing at those.
  """
  return bool(_find(opt_state, _msam_family_states()))
