"""Where an optax optimizer keeps its gradient momentum, read from its state.

`msam_of` perturbs along the momentum the base optimizer keeps anyway; this
finds that buffer in the base's state tree, however the base is composed
(`optax.chain`, `optax.partition` / `multi_transform` as in `contrib.muon`,
`inject_hyperparams`, `masked`).
"""

from typing import Any, Callable, Optional

import jax
import optax
import optax.contrib

from msam_jax.optim.baselines import AdamWState

__all__ = ["find_momentum"]  # MomentumFn is the annotation of `msam_of(momentum=)`

MomentumFn = Callable[[optax.OptState], optax.Updates]  # base state -> momentum, a tree like params

# State type -> the field holding a first moment of the gradient (or of the preconditioned
# update, as adafactor's momentum and rmsprop's trace): its direction is what MSAM ascends along.
KNOWN_BUFFERS: dict[type, str] = {
  optax.TraceState: "trace",  # optax.trace: sgd(momentum=...), rmsprop(momentum=...), this project's sgd
  optax.ScaleByAdamState: "mu",  # adam, adamw, nadam(w), adamax, radam, yogi, ...
  optax.ScaleByAmsgradState: "mu",
  optax.ScaleByBeliefState: "mu",  # adabelief
  optax.ScaleByLionState: "mu",  # lion
  optax.ScaleByNovogradState: "mu",
  optax.EmaState: "ema",  # adafactor(momentum=...)
  optax.contrib.MuonState: "mu",  # contrib.muon (its non-matrix leaves: the ScaleByAdamState)
  AdamWState: "mu",  # this project's adamw
}


def _masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _merge(buffers: list) -> Any:
  """One tree from several buffers that each cover some leaves (the rest `MaskedNode`)."""

  def pick(*xs):
    present = [x for x in xs if not _masked(x)]
    if len(present) > 1:
      raise ValueError("two momentum buffers for the same parameter")
    return present[0] if present else optax.MaskedNode()

  return jax.tree.map(pick, *buffers, is_leaf=_masked)


def find_momentum(base_state: optax.OptState) -> Optional[optax.Updates]:
  """The gradient momentum in `base_state`, a tree like the params; None if there is none.

  Buffers of the `KNOWN_BUFFERS` types anywhere in the state are merged leaf by
  leaf (`contrib.muon` keeps one for its matrices and Adam's for the rest);
  leaves no buffer covers are `optax.MaskedNode` (MSAM leaves them unperturbed).

  Raises:
    ValueError: when two buffers cover the same parameter (e.g. a chain of
      `trace` and `scale_by_adam`): which one is meant is the caller's choice.
  """
  is_known = lambda x: type(x) in KNOWN_BUFFERS
  found = [getattr(s, KNOWN_BUFFERS[type(s)]) for s in jax.tree.leaves(base_state, is_leaf=is_known) if is_known(s)]
  if not found:
    return None
  if len(found) == 1:
    return found[0]
  try:
    return _merge(found)
  except ValueError as error:  # differing tree structures, or overlapping buffers
    names = ", ".join(sorted({type(s).__name__ for s in jax.tree.leaves(base_state, is_leaf=is_known) if is_known(s)}))
    raise ValueError(
      f"msam_of found several momentum buffers in the base state ({names}) and cannot tell which to "
      "ascend along; pass momentum=lambda base_state: <the buffer, a tree like the params>."
    ) from error
