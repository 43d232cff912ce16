"""ASAM: SAM with a perturbation scaled to each weight's magnitude.

Kwon, Kim, Park & Choi, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks", ICML 2021 (arXiv:2102.11600).

Two reference codes, both reachable here:

* SamsungLabs/ASAM (the authors'): ``eta=0.01`` on the parameters whose torch
  name contains "weight" (kernels and norm scales, not biases), ``T = 1`` on
  biases. For Flax parameter trees: ``asam(base, rho, eta=0.01,
  mask=all_but_biases)``. It adds 1e-16 to the norm where this adds 1e-12 (as
  the rest of the SAM family); the two differ by ``1e-12 / ||T g||`` relative.
* davda54/sam ``SAM(..., adaptive=True)``: ``eta=0`` on every parameter:
  ``asam(base, rho, eta=0.0)`` (``mask=None``).
"""

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from msam_jax import validation
from msam_jax.optim.numerics import global_norm, wide_dtype
from msam_jax.optim.sam import ascent_perturbation, directional_variant, perturb

Mask = Union[Any, Callable[[optax.Params], Any], None]


def _last_key_name(path) -> str:
  key = path[-1] if path else None
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def all_but_biases(params: optax.Params) -> Any:
  """The mask "every leaf except biases": False where a leaf is named ``bias``.

  With Flax parameter trees this selects kernels, embeddings and norm scales,
  what SamsungLabs/ASAM selects by the torch name "weight".
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _last_key_name(path) != "bias", params)


def _mask_flags(mask: Mask, params: optax.Params) -> list:
  """One flag per leaf of `params` (a Python bool or a boolean scalar array)."""
  leaves = jax.tree.leaves(params)
  if mask is None:
    return [True] * len(leaves)
  tree = mask(params) if callable(mask) else mask
  if jax.tree.structure(tree) != jax.tree.structure(params):
    raise ValueError(
      f"mask must have the structure of the params, got "
      f"{jax.tree.structure(tree)} for params {jax.tree.structure(params)}"
    )
  return jax.tree.leaves(tree)


def _adaptive_perturbation(grads: optax.Updates, params: optax.Params, rho, eta, flags: list) -> optax.Updates:
  """ASAM's ascent ``e = rho T^2 g / (||T g|| + 1e-12)``, ``T = |w| + eta`` where flagged.

  The norm is over all leaves, in float32 or wider; `e` has the grads' dtypes.
  With every flag False this is SAM's `ascent_perturbation`, bit for bit.
  """
  g_leaves, treedef = jax.tree.flatten(grads)
  p_leaves = jax.tree.leaves(params)
  scaled, twice_scaled = [], []  # T g and T^2 g
  for g, p, flag in zip(g_leaves, p_leaves, flags, strict=True):
    if flag is False:
      scaled.append(g)
      twice_scaled.append(g)
      continue
    dtype = wide_dtype(g, p)
    t = jnp.abs(p.astype(dtype)) + eta
    if flag is not True:
      t = jnp.where(flag, t, jnp.ones_like(t))
    tg = t * g.astype(dtype)
    scaled.append(tg)
    twice_scaled.append(t * tg)
  norm = global_norm(scaled)
  e = ascent_perturbation(jax.tree.unflatten(treedef, twice_scaled), rho, norm=norm)
  return jax.tree.map(lambda d, g: d.astype(g.dtype), e, grads)


def asam(
  base: optax.GradientTransformation,
  rho: optax.ScalarOrSchedule = 0.5,
  eta: float = 0.01,
  mask: Mask = None,
  group_size: Optional[int] = None,
  axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """Adaptive SAM: the base step with the gradient at ``p + e``, `e` scaled by ``|w|``.

  One update::

    T  = |p| + eta on the leaves `mask` selects, 1 on the others
    e  = rho T^2 g1 / (||T g1|| + 1e-12)       # g1 = grads, norm over all leaves
    g2 = grad mean(loss_fn(p + e))
    updates = base.update(g2, params=p)

  SamsungLabs/ASAM is ``mask=all_but_biases, eta=0.01``; davda54/sam
  ``adaptive=True`` is ``eta=0, mask=None`` (module docstring). A mask of all
  False is `sam`.

  Args:
    base: any optax transformation; it receives `g2` and the unperturbed params.
    rho: perturbation radius >= 0, a float or a schedule (larger than SAM's:
      SamsungLabs/ASAM defaults to 0.5, davda54/sam suggests 2.0 for adaptive).
    eta: >= 0, keeps small weights perturbable.
    mask: None (every leaf), a pytree of bools shaped like the params, or a
      callable params -> such a pytree (e.g. `all_but_biases`); its structure is
      checked at the first update.
    group_size: m-sharpness, as in `sam`: each group of m examples gets its own
      `e` from its own first-pass gradient; `grads` then unused (may be None).
    axis_name: per-device groups inside `shard_map`/`pmap`, as in `sam`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update(grads, state, params, *,
    loss_fn, losses=None, grad_fn=None)` as documented in `msam_jax.optim.sam`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, msam_jax
    >>> loss_fn = lambda p, indices=None: jnp.sum(p["w"] ** 2, keepdims=True)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = msam_jax.asam(msam_jax.sgd(0.1), rho=0.5, eta=0.0)
    >>> grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    >>> updates, state = tx.update(grads, tx.init(params), params, loss_fn=loss_fn)
    >>> [round(float(w), 3) for w in optax.apply_updates(params, updates)["w"]]  # e = rho T^2 g / ||T g||, T = |w|
    [2.253, 2.851]
  """
  validation.non_negative("eta", eta)

  def direction_at(radius, params):
    flags = _mask_flags(mask, params)

    def direction(g1, p, grad_at):
      return grad_at(perturb(p, _adaptive_perturbation(g1, p, radius, eta, flags)))

    return direction

  return directional_variant("asam", base, rho, group_size, direction_at, axis_name)
