"""Momentum-SAM: SAM's ascent along the momentum instead of a second gradient.

Becker, Altrock & Risse, "Momentum-SAM: Sharpness Aware Minimization without
Computational Overhead", arXiv:2401.12033 (2024).

The model holds the *perturbed* parameters ``p~ = p - c v`` (`v` the momentum,
`c = rho / ||v||` a scalar), so the gradient of an ordinary training step is
taken at the ascent point and MSAM costs one gradient per step, like SGD. The
optimizer state carries `v` (which SGD/Adam keep anyway) and the scalar `c`;
`eval_params` adds ``c v`` back to give the unperturbed parameters for
evaluation and export.
"""

import dataclasses
import sys
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim import baselines
from msam_jax.optim.momentum import MomentumFn, find_momentum
from msam_jax.optim.numerics import NORM_EPS, global_norm, value_at, wide_dtype, widen
from msam_jax.optim.sam import base_update, check_base


class MsamState(NamedTuple):
  """State of `msam`. The stored parameters are ``p - offset_scale * momentum``."""

  count: jax.Array  # int32 scalar: number of updates applied so far
  momentum: optax.Updates  # v, one buffer like the params
  offset_scale: jax.Array  # c = rho / (||v|| + 1e-12), float32 or wider


class AdamWMsamState(NamedTuple):
  """State of `adamw_msam`. The stored parameters are ``p - offset_scale * mu``."""

  count: jax.Array  # int32 scalar: number of updates applied so far
  mu: optax.Updates  # exp_avg, also the ascent direction
  nu: optax.Updates  # exp_avg_sq
  offset_scale: jax.Array  # c = rho / (||mu|| + 1e-12), float32 or wider


# Undoing the old perturbation needs c_old * v_old, but the update also writes the new
# momentum. With donated buffers (as in a training loop) XLA must then copy v_old before
# overwriting it, an extra pass over the momentum. For a constant momentum mu >= 0.5,
# v_old = (v - d) / mu is recomputed from the new momentum instead (the original's
# "more efficient one step update"), at most doubling the rounding of that small term.
_MIN_RECONSTRUCTING_DECAY = 0.5


def _reconstructs_old(decay) -> bool:
  """Whether the old momentum is recomputed from the new one (see above)."""
  value = validation.concrete_value(decay)
  return value is not None and value >= _MIN_RECONSTRUCTING_DECAY


def msam(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float = 0.9,
  rho: optax.ScalarOrSchedule = 0.3,
  weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """Momentum-SAM on SGD with momentum (the original's `MSAM`).

  `params` (and the gradients) are the perturbed parameters ``p~``. One update::

    d  = g + wd p~                    # weight decay at the perturbed point
    v  = mu v + d                     # momentum (first step: v = d)
    p  = p~ + c_old v_old - lr v      # undo the old ascent, SGD step
    c  = rho / (||v|| + 1e-12)        # ||.|| global over all leaves
    p~ = p - c v                      # ascend along -v for the next gradient

  computed as one update ``c_old v_old - (lr + c) v``: one pass computes `v`
  and its norm, a second the update. For a constant ``momentum >= 0.5`` the
  second pass recomputes ``c_old v_old`` from the new `v` (``v_old = (v - d)/mu``)
  so that no copy of the old momentum is needed when buffers are donated; with
  `optax.inject_hyperparams`, list ``"momentum"`` in `static_args` to keep that.
  `optax.apply_updates` then yields the perturbed parameters the original
  holds after its step; `eval_params(params, state)` gives the unperturbed ones.
  Storing ``c`` (rho included) makes a changing rho undo exactly the
  perturbation it made; the original stores ``1/||v||`` and undoes with the new
  rho (docs/algorithms.md).

  Chaining: `msam` must be the *last* transformation that changes the update.
  ``optax.chain(optax.clip_by_global_norm(1.0), msam(...))`` is fine: clipping
  acts on the gradient before MSAM sees it (so does wrapping it in
  `optax.MultiSteps`, which accumulates gradients). A transformation *after*
  `msam` that rescales updates (a learning-rate scale, update clipping, a
  trust ratio) would also rescale the ``c_old v_old - c v`` perturbation part
  of the update: the stored parameters would no longer be ``p - c v``, the
  perturbation would not be undone, and `eval_params` would return wrong
  parameters that drift further every step.

  Args:
    learning_rate: a float or an optax schedule (update count -> value).
    momentum: `mu` in [0, 1).
    rho: perturbation radius >= 0, a float or a schedule; 0 gives `sgd`.
    weight_decay: coupled (L2) decay coefficient, applied at the perturbed point.

  Returns:
    An `optax.GradientTransformationExtraArgs` (extra update arguments are
    ignored); `update` needs `params` unless the weight decay is the constant 0.

  Examples:
    >>> import jax.numpy as jnp, optax, msam_jax
    >>> tx = msam_jax.msam(learning_rate=0.5, momentum=0.9, rho=1.0)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> [round(float(w), 4) for w in params["w"]]  # the ascent point p - (rho / ||v||) v, v = (3, 4)
    [0.9, 1.2]
    >>> [round(float(w), 4) for w in msam_jax.eval_params(params, state)["w"]]  # the SGD step p - lr g
    [1.5, 2.0]
  """
  validation.non_negative("learning_rate", learning_rate)
  validation.in_interval("momentum", momentum, 0.0, 1.0, low_closed=True, high_closed=False)
  validation.non_negative("rho", rho)
  validation.non_negative("weight_decay", weight_decay)

  def init_fn(params):
    return MsamState(
      count=jnp.zeros([], jnp.int32),
      momentum=optax.tree.zeros_like(params),
      offset_scale=jnp.zeros([], wide_dtype(params)),
    )

  def update_fn(grads, state, params=None, **extra):
    del extra  # optax's convention: extra arguments meant for others are ignored
    lr = value_at(learning_rate, state.count)
    rho_now = value_at(rho, state.count)
    d = grads
    if baselines.applies_weight_decay(weight_decay, params):
      d = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
    new_v = jax.tree.map(lambda d_, v: (d_ + momentum * v).astype(v.dtype), d, state.momentum)
    c_old = state.offset_scale
    c_new = (rho_now / (global_norm(new_v) + NORM_EPS)).astype(c_old.dtype)
    step = lr + c_new
    if _reconstructs_old(momentum):
      # c_old v_old = k (v - d) with k = c_old / mu: the update reads v, g, p~ but not v_old.
      k = c_old / momentum
      if d is grads:
        update = lambda v, nv, g, p: -k * widen(g) + (k - step) * widen(nv)
      else:
        update = lambda v, nv, g, p: -k * widen(g) - (k * weight_decay) * widen(p) + (k - step) * widen(nv)
    else:
      update = lambda v, nv, g, p: c_old * widen(v) - step * widen(nv)
    updates = jax.tree.map(
      lambda v, nv, g, p: update(v, nv, g, p).astype(g.dtype),
      state.momentum,
      new_v,
      grads,
      grads if params is None else params,
    )
    return updates, MsamState(count=optax.safe_increment(state.count), momentum=new_v, offset_scale=c_new)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adamw_msam(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 1e-2,
  rho: optax.ScalarOrSchedule = 0.3,
) -> optax.GradientTransformationExtraArgs:
  """Momentum-SAM on AdamW (the original's `AdamW_MSAM`), ascent along ``-m``.

  `params` are the perturbed parameters ``p~``. One update (t = 1-based step)::

    p  = p~ + c_old m_old             # undo the old ascent
    m, s as in `adamw` (gradient taken at p~)
    p  = (p - (lr/(1-b1^t)) m / (sqrt(s)/sqrt(1-b2^t) + eps)) (1 - lr wd)
    c  = rho / (||m|| + 1e-12)        # raw (not bias-corrected) m
    p~ = p - c m

  State: AdamW's `count, mu, nu` plus the scalar `c`. The chaining caveat of
  `msam` applies: nothing that rescales updates may come after it. As in
  `msam`, a constant ``b1 >= 0.5`` lets the update recompute ``c_old m_old``
  from the new `m` (with `optax.inject_hyperparams`: ``static_args=("b1",)``).

  Args:
    learning_rate: a float or an optax schedule (update count -> value).
    b1, b2: moment decay rates in [0, 1).
    eps: added to the bias-corrected root of the second moment.
    weight_decay: decoupled decay, applied to the unperturbed parameters.
    rho: perturbation radius >= 0, a float or a schedule; 0 gives `adamw`.

  Returns:
    An `optax.GradientTransformationExtraArgs` (extra update arguments are
    ignored); `update` needs `params` unless the weight decay is the constant 0.

  Examples:
    >>> import jax.numpy as jnp, optax, msam_jax
    >>> tx = msam_jax.adamw_msam(learning_rate=0.5, weight_decay=0.0, rho=0.0)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([2.0, -8.0])}, state, params)
    >>> clean = msam_jax.eval_params(optax.apply_updates(params, updates), state)
    >>> [round(float(w), 4) for w in clean["w"]]  # rho=0 is adamw: w - lr sign(g) on the first step
    [2.5, 4.5]
  """
  baselines.check_adam_args(learning_rate, b1, b2, eps, weight_decay)
  validation.non_negative("rho", rho)

  def init_fn(params):
    mu, nu = baselines.init_adam_moments(params)
    return AdamWMsamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, offset_scale=jnp.zeros([], wide_dtype(params)))

  def update_fn(grads, state, params=None, **extra):
    del extra  # optax's convention: extra arguments meant for others are ignored
    lr = value_at(learning_rate, state.count)
    rho_now = value_at(rho, state.count)
    count = optax.safe_increment(state.count)
    mu, nu = baselines.update_adam_moments(grads, state.mu, state.nu, b1, b2)
    descent = baselines.adam_descent(mu, nu, count, lr, b1, b2, eps)
    c_old = state.offset_scale
    c_new = (rho_now / (global_norm(mu) + NORM_EPS)).astype(c_old.dtype)
    # Undo + Adam step: the move from the stored p~ to (unperturbed p) + descent.
    if _reconstructs_old(b1):
      # c_old m_old = k (m - (1 - b1) g) with k = c_old / b1: no read of m_old.
      k = c_old / b1
      moved = jax.tree.map(lambda m, g, s: k * widen(m) - (k * (1 - b1)) * widen(g) + s, mu, grads, descent)
    else:
      moved = jax.tree.map(lambda m, s: c_old * widen(m) + s, state.mu, descent)
    decayed = moved
    if baselines.applies_weight_decay(weight_decay, params):
      decay = lr * weight_decay
      # p_new = (p~ + moved)(1 - lr wd)  =>  p_new - p~ = moved - lr wd (p~ + moved)
      decayed = jax.tree.map(lambda x, p: x - decay * (p + x), moved, params)
    updates = jax.tree.map(lambda x, m, g: (x - c_new * widen(m)).astype(g.dtype), decayed, mu, grads)
    return updates, AdamWMsamState(count=count, mu=mu, nu=nu, offset_scale=c_new)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MsamOfState:
  """State of `msam_of`: the base's state and the scalar `c` (plus the count for a rho schedule).

  The stored parameters are ``p - offset_scale * momentum_of(base_state)``.
  `momentum_of` is static (part of the tree structure, not a leaf), so that
  `eval_params` can read the momentum from the state alone.
  """

  count: jax.Array  # int32 scalar: number of updates applied so far
  base_state: optax.OptState
  offset_scale: jax.Array  # c = rho / (||m|| + 1e-12), float32 or wider
  momentum_of: MomentumFn = dataclasses.field(default=find_momentum, metadata=dict(static=True))


def _momentum_error(base_state, found_none: bool) -> ValueError:
  what = "found no gradient-momentum buffer" if found_none else "got a momentum that is not a tree like the params"
  kinds = sorted({type(s).__name__ for s in jax.tree.leaves(base_state, is_leaf=lambda x: hasattr(x, "_fields"))})
  return ValueError(
    f"msam_of {what} in the base optimizer's state ({', '.join(kinds) or 'empty'}); give the base a "
    "momentum (e.g. sgd with momentum > 0, adafactor with momentum=0.9) or pass "
    "momentum=lambda base_state: <its first-moment buffer, a tree like the params>."
  )


def msam_of(
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.3,
  momentum: Optional[MomentumFn] = None,
) -> optax.GradientTransformationExtraArgs:
  """Momentum-SAM around any optax optimizer that keeps a gradient momentum.

  Becker, Altrock & Risse, arXiv:2401.12033 (2024), generalised: the ascent is
  along the momentum `m` the base keeps anyway (SGD's trace, Adam's and Lion's
  first moment, Muon's, adafactor's), so no buffer is added. `params` (and the
  gradients) are the perturbed parameters ``p~``. One update::

    p  = p~ + c_old m_old             # undo, m_old read from the base state
    u  = base.update(g, params=p)     # g taken at p~; the base sees unperturbed p
    m  = the base's momentum after u
    c  = rho / (||m|| + 1e-12)        # ||.|| global, float32 or wider
    p~ = p + u - c m                  # the update is c_old m_old + u - c m

  State: the base's state, the scalar `c` and the update count. `rho = 0` is
  the base; ``msam_of(adamw(...))`` is `adamw_msam` and ``msam_of(sgd(...,
  weight_decay=0))`` is `msam` (to round-off). With coupled weight decay
  ``msam_of(sgd(..., weight_decay=wd))`` decays the unperturbed `p` where
  `msam` (the original) decays ``p~`` (docs/algorithms.md). Unlike `msam` it
  reads the old momentum before the base overwrites it, so with donated
  buffers XLA may keep a transient copy of it. The chaining rule of `msam`
  holds: nothing that rescales updates may follow it (`eval_params` checks).

  Args:
    base: an optax transformation keeping a gradient momentum; it receives
      the unperturbed params and the extra update arguments.
    rho: perturbation radius >= 0, a float or a schedule; 0 gives `base`.
    momentum: None finds the buffer (``msam_jax.optim.momentum.KNOWN_BUFFERS``:
      optax's trace, adam/adamw/nadam, amsgrad, adabelief, lion, novograd,
      adafactor's ema, contrib.muon, this project's sgd/adamw); otherwise
      ``momentum(base_state)`` returns it, a tree like the params
      (`optax.MaskedNode` leaves are left unperturbed). With
      `optax.inject_hyperparams` list ``"momentum"`` in `static_args`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `init` raises ValueError when
    the base keeps no momentum.

  Examples:
    >>> import jax.numpy as jnp, optax, msam_jax
    >>> tx = msam_jax.msam_of(optax.lion(0.125, weight_decay=0.0), rho=0.3)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([0.5, 0.5])}, state, params)
    >>> params = optax.apply_updates(params, updates)  # perturbed: p - c m
    >>> print(msam_jax.eval_params(params, state)["w"])  # unperturbed: one Lion step
    [ 0.875 -2.125]
  """
  check_base(base)
  validation.non_negative("rho", rho)
  if momentum is not None and not callable(momentum):
    validation.fail("momentum", momentum, "None or a function base_state -> momentum tree")
  momentum_of = find_momentum if momentum is None else momentum

  def init_fn(params):
    base_state = base.init(params)
    m = momentum_of(base_state)
    if m is None:
      raise _momentum_error(base_state, found_none=True)
    try:
      jax.tree.map(lambda *_: None, params, m, is_leaf=_masked)
    except (ValueError, TypeError):
      raise _momentum_error(base_state, found_none=False) from None
    return MsamOfState(
      count=jnp.zeros([], jnp.int32),
      base_state=base_state,
      offset_scale=jnp.zeros([], wide_dtype(params)),
      momentum_of=momentum_of,
    )

  def update_fn(grads, state, params=None, **extra):
    rho_now = value_at(rho, state.count)
    c_old = state.offset_scale
    m_old = momentum_of(state.base_state)
    unperturbed = None if params is None else _add_scaled(params, c_old, m_old)
    base_updates, base_state = base_update(base, grads, state.base_state, unperturbed, extra)
    m_new = momentum_of(base_state)
    c_new = (rho_now / (global_norm(m_new) + NORM_EPS)).astype(c_old.dtype)

    def leaf(g, u, mo, mn):
      if _masked(mo):
        return u
      return (c_old * widen(mo) + widen(u) - c_new * widen(mn)).astype(g.dtype)

    updates = jax.tree.map(leaf, grads, base_updates, m_old, m_new)
    new_state = MsamOfState(
      count=optax.safe_increment(state.count), base_state=base_state, offset_scale=c_new, momentum_of=momentum_of
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _add_scaled(params, scale, direction):
  """``params + scale * direction`` leafwise in float32 or wider, leaf dtypes kept; masked leaves as they are."""

  def leaf(p, v):
    return p if _masked(v) else (widen(p) + scale * widen(v)).astype(p.dtype)

  return jax.tree.map(leaf, params, direction)


def _is_msam_state(x) -> bool:
  return isinstance(x, (MsamState, AdamWMsamState, MsamOfState))


def _ascent_direction(state):
  if isinstance(state, MsamOfState):
    return state.momentum_of(state.base_state)
  return state.momentum if isinstance(state, MsamState) else state.mu


def _as_pure(tree):
  """NNX `Variable` leaves replaced by their values (no-op unless Flax NNX is in use)."""
  nnx = sys.modules.get("flax.nnx")  # never imported here: the core install has no Flax
  if nnx is None:
    return tree
  is_variable = lambda x: isinstance(x, nnx.Variable)
  has_variables = any(is_variable(x) for x in jax.tree.leaves(tree, is_leaf=is_variable))
  return nnx.as_pure(tree) if has_variables else tree


def _contains_msam_state(tree) -> bool:
  return any(_is_msam_state(x) for x in jax.tree.leaves(tree, is_leaf=_is_msam_state))


def _check_msam_is_last(opt_state: optax.OptState) -> None:
  """Refuses an `optax.chain` in which something follows `msam` / `adamw_msam`.

  The update of `msam` moves the parameters by the descent *and* by the change
  of the perturbation ``c_old v_old - c v``; a transformation after it in a
  chain (a learning-rate scale, `reduce_on_plateau`, update clipping, a trust
  ratio) would transform both, so the stored parameters would no longer be
  ``p - c v`` and `eval_params` would be wrong. A chain cannot show a
  transformation what follows it, so this reads the state tree instead: an
  `optax.chain` state is a plain tuple of its members' states, and a member
  holding an MSAM-family state must be the last one.

  Raises:
    ValueError: naming the chain position of the transformation that follows.
  """
  if type(opt_state) is tuple:  # optax.chain (NamedTuple states are not chains)
    for position, member in enumerate(opt_state[:-1]):
      if _contains_msam_state(member):
        raise ValueError(
          f"msam/adamw_msam/msam_of is member {position} of an optax.chain of {len(opt_state)} and "
          f"{len(opt_state) - 1 - position} transformation(s) follow it; they would rescale its "
          "perturbation and eval_params would be wrong. Put gradient transformations (clipping, "
          "accumulation) before msam and schedule the learning rate inside msam(learning_rate=...)."
        )
  if _is_msam_state(opt_state):
    return
  children = (
    opt_state.values() if isinstance(opt_state, dict) else opt_state if isinstance(opt_state, (tuple, list)) else ()
  )
  for child in children:
    _check_msam_is_last(child)


def eval_params(params: optax.Params, opt_state: optax.OptState) -> optax.Params:
  """The unperturbed parameters ``p~ + c v`` behind MSAM-family parameters.

  Finds every `msam` / `adamw_msam` / `msam_of` state anywhere in `opt_state` (inside
  `optax.chain`, `optax.inject_hyperparams`, `optax.MultiSteps`,
  `optax.multi_transform`, ...) and undoes its perturbation; with no such state
  it returns `params` unchanged, so a training loop can always call it.
  Leaves keep their dtypes; jittable. Flax NNX states (`nnx.state(model,
  nnx.Param)`, `nnx.Optimizer.opt_state`) are accepted as they are; the result
  is then a pure `nnx.State` for `nnx.update(model, ...)`.

  Raises:
    ValueError: when a transformation follows `msam` in an `optax.chain`: the
      unperturbed point is then unknown.

  Examples:
    >>> import jax.numpy as jnp, optax, msam_jax
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0), msam_jax.msam(0.5, rho=0.1))
    >>> state = tx.init(params)
    >>> msam_jax.eval_params(params, state)["w"]  # nothing perturbed yet
    Array([3., 4.], dtype=float32)
    >>> msam_jax.eval_params(params, msam_jax.sgd(0.5).init(params)) is params  # not MSAM
    True
  """
  params, opt_state = _as_pure(params), _as_pure(opt_state)
  _check_msam_is_last(opt_state)
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_msam_state) if _is_msam_state(s)]
  for state in states:
    params = _add_scaled(params, state.offset_scale, _ascent_direction(state))
  return params
