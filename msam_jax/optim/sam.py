"""SAM around any optax optimizer, and the ascent step the SAM family shares.

Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for
Efficiently Improving Generalization", ICLR 2021 (arXiv:2010.01412).

The SAM family (`sam`, `asam`, `gsam`, `esam`, `looksam`) are
`optax.GradientTransformationExtraArgs` called as::

  updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=losses)

`grads` is the gradient of the mean loss at `params` (the first pass the
training step computes anyway); `loss_fn(params, indices=None)` returns the
per-example losses of the current batch, shape `[B]`, or of the examples at the
integer positions `indices`, shape `[len(indices)]`; `losses` (optional) are the
first pass's per-example losses, which ESAM uses and the others ignore. The
transformation computes the further gradients itself, or (`sam`, `asam`,
`gsam`, `looksam`) with the optional ``grad_fn(params)``: the gradient of the
mean loss over the whole batch, which a training loop that accumulates
micro-batches passes.

``second_gradient`` (optional, a Python bool fixed when the step is traced):
whether this update takes the second gradient. Absent (None), each
transformation decides as its rule says: `sam`, `asam`, `gsam` and `esam`
always, `looksam` and `rst` in a `jax.lax.cond` on the update count or the
draw. ``False`` gives the step without it: the base step with the first-pass
gradient (`looksam`: its reuse step), which for `sam`, `asam` and `gsam` is
their step at rho 0 computed with one gradient instead of two (the groups'
first-pass gradients with m-sharpness). ``True`` takes it. A training loop
that knows on the host which updates need it (`looksam`'s every k-th, `rst`'s
draws from `rst_coin`, every update whose scheduled rho is above 0) compiles
the two variants and picks one per step: no conditional on the device, and
the steps of a rho schedule that is 0 cost one gradient. Transformations
outside the SAM family ignore it, as any extra argument.

m-sharpness (`sam`, `asam`, `gsam` with ``group_size=m``; Foret et al. 2021,
Section 4.1): the batch splits into consecutive groups of m examples, each
group takes its own ascent from its own first-pass gradient, its second-pass
gradient is taken at its own perturbed point, and the base steps with the mean
of the groups' second-pass gradients.

Not under `optax.MultiSteps`: it calls `update` on every micro-batch with that
micro-batch's `loss_fn`, so the second gradient would be the last micro-batch's
alone while the ascent comes from the accumulated gradient. `update` refuses
it (`refuse_multi_steps`); accumulate by passing the accumulated gradient as
`grads` and the whole batch's ``grad_fn`` instead (docs/algorithms.md).

Per device (``axis_name=``): the update runs inside `jax.shard_map` (or
`jax.pmap`) over a mesh axis the batch is split over; `loss_fn` and `grads`
see the device's own examples, groups are formed there, and the groups'
second-pass gradients are averaged over the axis as well (`jax.lax.pmean`) before
the base step. No other collective happens before the second pass: this is the
official SAM code's per-replica perturbation (m = the per-device batch). Its
result equals ``group_size=m`` on the whole batch, the devices' batches
concatenated in axis order.
"""

import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.numerics import NORM_EPS, global_norm, value_at, widen

LossFn = Callable[..., jax.Array]  # loss_fn(params, indices=None) -> per-example losses
# direction(g1, params, grad_at) -> the gradient the base steps with; grad_at(point) is the
# gradient of the mean loss (of the batch or of one group) at `point`.
Direction = Callable[[optax.Updates, optax.Params, Callable], optax.Updates]
GradFn = Callable[[optax.Params], optax.Updates]  # grad_fn(params) -> grad of the mean loss
UPDATE_CALL = "update(grads, state, params, loss_fn=...)"  # named when params are missing


class SamState(NamedTuple):
  """State of `sam`: the update count (for a rho schedule) and the base's state."""

  count: jax.Array
  base_state: optax.OptState


def ascent_perturbation(
  grads: optax.Updates, rho, participating=None, norm: Optional[jax.Array] = None
) -> optax.Updates:
  """SAM's ascent ``e = rho g / (||g|| + 1e-12)``, the norm in float32 or wider.

  Args:
    grads: the first-pass gradient (without weight decay).
    rho: the perturbation radius (a scalar).
    participating: optional list of boolean scalars, one per leaf of `grads`
      (ESAM's stochastic weight perturbation): leaves marked False get ``e = 0``
      and are left out of the norm.
    norm: ``||g||`` when the caller has it already (over the participating leaves).

  Returns:
    `e`, a tree like `grads` with the leaves' dtypes.
  """
  if norm is None:
    norm = global_norm(grads, participating)
  scale = rho / (norm + NORM_EPS)
  leaves, treedef = jax.tree.flatten(grads)
  flags = [True] * len(leaves) if participating is None else participating
  out = []
  for g, flag in zip(leaves, flags, strict=True):
    e = (scale * widen(g, scale.dtype)).astype(g.dtype)
    out.append(e if flag is True else jnp.where(flag, e, jnp.zeros_like(e)))
  return jax.tree.unflatten(treedef, out)


def perturb(params: optax.Params, e: optax.Updates) -> optax.Params:
  """``params + e``, leaf dtypes kept."""
  return jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, e)


def mean_loss_grad(
  loss_fn: LossFn, params: optax.Params, indices=None, grad_fn: Optional[GradFn] = None
) -> optax.Updates:
  """Gradient of the mean of `loss_fn`'s per-example losses; `grad_fn(params)` when given."""
  if grad_fn is not None:
    if indices is not None:
      raise ValueError("grad_fn gives the whole batch's gradient; it cannot select examples")
    return grad_fn(params)
  if indices is None:
    return jax.grad(lambda p: jnp.mean(loss_fn(p)))(params)
  return jax.grad(lambda p: jnp.mean(loss_fn(p, indices)))(params)


def _batch_size_of(loss_fn: LossFn, params: optax.Params) -> int:
  """The batch size `loss_fn` sees, from its output shape (traced, never run)."""
  return jax.eval_shape(loss_fn, params).shape[0]


def _sam_family_gradient(
  direction: Direction, grads, params, loss_fn: LossFn, group_size: Optional[int], grad_fn: Optional[GradFn] = None
) -> optax.Updates:
  """The gradient a SAM variant hands its base, for the batch or per group of examples.

  ``group_size=None``: ``direction(grads, params, grad_at)`` with `grad_at` the
  whole batch's gradient. ``group_size=m``: for each of the ``B / m`` groups of
  consecutive examples, ``direction(g1_i, params, grad_at_i)`` with `g1_i` the
  group's own first-pass gradient at `params` and `grad_at_i` the group's
  gradient; the results are averaged. Groups are vmapped, so each evaluates
  `loss_fn` twice on its m examples (two gradients per example in all) and
  `grads` is not used; under `jax.jit` a whole-batch first pass computed only
  to be passed here is dead code that XLA drops. One group (``m = B``) is the
  ``None`` case, `grads` included.

  Memory: the vmapped groups hold ``B / m`` perturbed copies of the parameters
  and of their gradients at once. Sharding: with the batch sharded and
  automatic partitioning, XLA does not split the groups over the devices (the
  gather ``x[indices]`` inside `loss_fn` makes it collect the batch on every
  device); groups of the per-device batch without communication are the
  ``axis_name`` mode under `shard_map` (module docstring).

  `grad_fn` (whole-batch gradients, e.g. accumulated over micro-batches)
  replaces the whole batch's `loss_fn` gradient; it cannot serve groups.
  """
  if group_size is not None:
    if grad_fn is not None:
      raise ValueError(
        "group_size cannot be combined with grad_fn (accumulated whole-batch "
        "gradients): each group needs its own gradients"
      )
    batch_size = _batch_size_of(loss_fn, params)
    if batch_size % group_size:
      raise ValueError(
        f"group_size must divide the batch size, got group_size={group_size} for a batch of {batch_size}"
      )
  if group_size is None or group_size == batch_size:
    whole_batch = lambda point: mean_loss_grad(loss_fn, point, grad_fn=grad_fn)
    return direction(whole_batch(params) if grads is None else grads, params, whole_batch)

  def one_group(indices):
    grad_at = lambda point: mean_loss_grad(loss_fn, point, indices)
    return direction(grad_at(params), params, grad_at)

  groups = jnp.arange(batch_size).reshape(batch_size // group_size, group_size)
  per_group = jax.vmap(one_group)(groups)
  return jax.tree.map(lambda h: jnp.mean(h, axis=0), per_group)


def refuse_multi_steps(name: str) -> None:
  """Raises ValueError when this update is called from `optax.MultiSteps.update`.

  Read from the Python call stack (at trace time under `jax.jit`), which is the
  only place the wrapper is visible from inside: MultiSteps passes neither a
  marker nor its state to the inner update.
  """
  frame = sys._getframe(1)
  while frame is not None:
    if frame.f_code is _MULTI_STEPS_UPDATE:
      raise ValueError(
        f"{name} cannot run inside optax.MultiSteps: it would take its second gradient from the last "
        "micro-batch's loss_fn alone; accumulate instead by passing the micro-batches' mean gradient as grads "
        "and grad_fn=(the whole batch's mean-loss gradient) to update (docs/algorithms.md, 'Gradient accumulation')"
      )
    frame = frame.f_back


_MULTI_STEPS_UPDATE = optax.MultiSteps.update.__code__


def check_second_gradient(second_gradient) -> None:
  """``second_gradient`` is None or a Python bool: it picks what is traced, so it cannot be an array."""
  if second_gradient is not None and not isinstance(second_gradient, bool):
    validation.fail("second_gradient", second_gradient, "None, True or False (a Python bool, fixed at trace time)")


def first_pass_direction(g1, params, grad_at):
  """The `Direction` of a step without a second gradient: the first-pass gradient itself."""
  del params, grad_at
  return g1


def sam_direction_at(radius, params) -> Direction:
  """SAM's `Direction` at radius `radius`: the gradient at ``p + radius g1 / (||g1|| + 1e-12)``."""
  del params

  def direction(g1, p, grad_at):
    return grad_at(perturb(p, ascent_perturbation(g1, radius)))

  return direction


def check_base(base) -> None:
  if not isinstance(base, optax.GradientTransformation):
    validation.fail("base", base, "an optax.GradientTransformation")


def base_update(base: optax.GradientTransformation, grads, state, params, extra: dict[str, Any]):
  """The base optimizer's step; extra args reach it only if it accepts them."""
  return optax.with_extra_args_support(base).update(grads, state, params, **extra)


def _device_local(params: optax.Params, axis_name: str) -> optax.Params:
  """`params` (replicated over `axis_name`) cast to each device's own copy.

  Inside `shard_map`, autodiff sums the gradient at axis-invariant params over
  the axis; at the device's own copy it is the device's.
  """
  return jax.tree.map(lambda p: jax.lax.pcast(p, axis_name, to="varying"), params)


class VariantInputs(NamedTuple):
  """What one update hands a SAM variant's gradient rules (`GradientRule`)."""

  grads: optax.Updates  # the first-pass gradient at `params` (None allowed with group_size)
  params: optax.Params  # unperturbed; with axis_name, the device's own copy
  loss_fn: LossFn
  losses: Optional[jax.Array]  # the first pass's per-example losses, when the caller passed them
  grad_fn: Optional[GradFn]
  radius: jax.Array  # rho at this update
  state: NamedTuple  # the variant's state before this update: count, its own fields, base_state


# rule(inputs) -> (the gradient the base steps with, the variant's own state fields after this update).
GradientRule = Callable[[VariantInputs], tuple[optax.Updates, dict[str, Any]]]


def first_pass_gradient(inputs: VariantInputs) -> tuple[optax.Updates, dict[str, Any]]:
  """The `GradientRule` of a base step: the whole batch's first-pass gradient; no own state."""
  grads = inputs.grads
  if grads is None:
    grads = mean_loss_grad(inputs.loss_fn, inputs.params, grad_fn=inputs.grad_fn)
  return grads, {}


def grouped_gradient(direction_at: Callable[[Any, optax.Params], Direction], group_size: Optional[int]) -> GradientRule:
  """The `GradientRule` "step with the `Direction` `direction_at(radius, params)`", per group of examples.

  `_sam_family_gradient` applies it to the whole batch (``group_size=None``) or
  to each group of `group_size` examples (m-sharpness); no own state.
  """
  validation.integer("group_size", group_size, optional=True)  # static: it fixes shapes

  def rule(inputs):
    direction = direction_at(inputs.radius, inputs.params)
    g = _sam_family_gradient(direction, inputs.grads, inputs.params, inputs.loss_fn, group_size, inputs.grad_fn)
    return g, {}

  return rule


def _always(inputs: VariantInputs) -> bool:
  del inputs
  return True


def _no_fields(params: optax.Params) -> dict[str, Any]:
  del params
  return {}


def sam_variant(
  name: str,
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule,
  second_pass: GradientRule,
  first_pass: GradientRule = first_pass_gradient,
  *,
  takes_second: Callable[[VariantInputs], Any] = _always,
  state_type: type = SamState,
  init_fields: Callable[[optax.Params], dict[str, Any]] = _no_fields,
  axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """The SAM family's update around two gradient rules, with or without the second pass.

  One update::

    inputs = VariantInputs(grads, params, loss_fn, losses, grad_fn, rho(count), state)
    take   = second_gradient if given, else takes_second(inputs)
    g, own = second_pass(inputs) if take else first_pass(inputs)
    g      = pmean(g, axis_name)                  # with axis_name
    updates, base_state = base.update(g, params=p)
    state  = state_type(count + 1, **own, base_state)

  `take` is a Python bool (the caller's ``second_gradient``, or a rule known
  when tracing, such as `sam`'s "always") or a traced boolean, which runs the
  two rules in a `jax.lax.cond` (LookSAM's count, RST's draw).

  A variant with state of its own (LookSAM's direction, ESAM's key) names a
  NamedTuple `state_type` with the fields ``count``, its own and
  ``base_state``; `init_fields(params)` gives its own fields' first values, and
  both rules return their values after the update (in a `lax.cond` the two
  must agree in structure). Checks `base`, `rho` and `axis_name`; `name` is
  the one the errors use.
  """
  check_base(base)
  validation.non_negative("rho", rho)
  if axis_name is not None and not isinstance(axis_name, str):
    validation.fail("axis_name", axis_name, "None or the name of a mapped axis (a str)")

  def init_fn(params):
    return state_type(count=jnp.zeros([], jnp.int32), base_state=base.init(params), **init_fields(params))

  def update_fn(
    grads,
    state,
    params=None,
    *,
    loss_fn: LossFn,
    losses: Optional[jax.Array] = None,
    grad_fn: Optional[GradFn] = None,
    second_gradient: Optional[bool] = None,
    **extra,
  ):
    validation.require_params(params, name, UPDATE_CALL)
    check_second_gradient(second_gradient)
    refuse_multi_steps(name)
    local = params if axis_name is None else _device_local(params, axis_name)
    inputs = VariantInputs(grads, local, loss_fn, losses, grad_fn, value_at(rho, state.count), state)
    take = takes_second(inputs) if second_gradient is None else second_gradient
    if isinstance(take, bool):  # known when tracing: only the rule taken is traced
      g, own = (second_pass if take else first_pass)(inputs)
    else:
      g, own = jax.lax.cond(take, lambda _: second_pass(inputs), lambda _: first_pass(inputs), None)
    if axis_name is not None:
      g = jax.lax.pmean(g, axis_name)
    updates, base_state = base_update(base, g, state.base_state, params, extra)
    return updates, state_type(count=optax.safe_increment(state.count), base_state=base_state, **own)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def directional_variant(
  name: str,
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule,
  group_size: Optional[int],
  direction_at: Callable[[Any, optax.Params], Direction],
  axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """A SAM variant that differs from `sam` only in its `Direction`, taken on every update.

  `direction_at(radius, params)` returns the variant's `Direction` for one
  update (`radius` the rho of that update, `params` the unperturbed ones). With
  ``second_gradient=False`` the direction is the first-pass gradient
  (`first_pass_direction`, per group with `group_size`): the step at rho 0
  without its second pass. State: `SamState`.
  """
  at_first_pass = lambda radius, params: first_pass_direction
  return sam_variant(
    name,
    base,
    rho,
    grouped_gradient(direction_at, group_size),
    grouped_gradient(at_first_pass, group_size),
    axis_name=axis_name,
  )


def sam(
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.05,
  group_size: Optional[int] = None,
  axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """Sharpness-aware minimization: the base step with the gradient at ``p + e``.

  One update::

    g1 = grads                                # first pass, at p
    e  = rho g1 / (||g1|| + 1e-12)            # g1 without weight decay
    g2 = grad mean(loss_fn(p + e))            # second pass
    updates = base.update(g2, params=p)       # base step at the unperturbed p

  The original SAM is ``sam(sgd(...), rho)``, AdamW-SAM ``sam(adamw(...), rho)``
  and its gradient clipping ``sam(optax.chain(optax.clip_by_global_norm(c),
  adamw(...)), rho)`` (clips g2).

  Args:
    base: any optax transformation; it receives `g2` and the unperturbed params.
    rho: perturbation radius >= 0, a float or a schedule; 0 gives `base`.
    group_size: m-sharpness (module docstring): None perturbs once from the whole
      batch; m (dividing the batch size) perturbs each group of m consecutive
      examples from its own first-pass gradient, `grads` then unused (it may be
      None) unless m is the whole batch. Batch norm in `loss_fn` computes its
      statistics per group there. A static int (with `optax.inject_hyperparams`,
      list it in `static_args`).
    axis_name: None, or the mapped axis (`shard_map`/`pmap`) the batch is split
      over: `grads` and `loss_fn` are then the device's own (unreduced), groups
      are formed per device (the whole device batch when `group_size` is None),
      and the second-pass gradient is averaged over the axis (module docstring).

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update(grads, state, params, *,
    loss_fn, losses=None, grad_fn=None, second_gradient=None)` (see the module
    docstring; ``second_gradient=False`` is the base step with `grads`).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, msam_jax
    >>> loss_fn = lambda p, indices=None: jnp.sum(p["w"] ** 2, keepdims=True)  # one example
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = msam_jax.sam(msam_jax.sgd(learning_rate=0.25), rho=5.0)
    >>> grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    >>> updates, state = tx.update(grads, tx.init(params), params, loss_fn=loss_fn)
    >>> optax.apply_updates(params, updates)["w"]  # stepped with the gradient at 2 p
    Array([0., 0.], dtype=float32)
  """

  return directional_variant("sam", base, rho, group_size, sam_direction_at, axis_name)
