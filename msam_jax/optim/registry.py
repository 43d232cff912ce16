"""The optimizers by name: one table that the config, the training factory, the
benchmarks and the tests read.

Each `Entry` says how to build the optimizer from keyword hyper-parameters, its
family, and which config field feeds each keyword. The table holds plain data
and the factories of this package only (no Flax, no ml_collections), so it is
usable from the core install.

Families (what a training loop must know; `state_utils.needs_loss_fn` and
`state_utils.perturbs_params` read the same facts from an optimizer's state):

* ``"base"``: an ordinary optimizer, ``factory(learning_rate, **static)``.
* ``"msam"``: ``factory(learning_rate, rho=, **static)``; the parameters it
  returns are perturbed, `eval_params` gives the unperturbed ones, and a
  batch-norm model's statistics are recomputed at those after training.
* ``"sam"``: ``factory(base, rho=, **static)`` wraps the optimizer named by
  `base` (built from the same hyper-parameters); its `update` takes
  ``loss_fn=`` (and ``losses=``), and ``second_gradient=`` from a loop that
  decides on the host which updates take the second gradient
  (`second_gradient_steps`).

The learning rate and rho are the hyper-parameters a run schedules (config
fields `learning_rate`, `rho` and their schedules); every other keyword of the
factory (and, for a ``"sam"`` entry, of its base's factory) is an *option*: a
constant that a training run reads from `config.optimizer_kwargs`
(`options(name)` lists them with their defaults, read from the signatures).
The few keywords a run fills from its own fields (ESAM's ``seed`` is
`config.seed`) are named in `config_fields`; ``group_size`` and ``axis_name``
(per-device m-sharpness) come from the step plan.

Adding an optimizer (say ``asam`` around SGD and ``adamw_asam`` around AdamW):

1. write ``msam_jax/optim/asam.py`` with ``asam(base, rho, eta=0.01, mask=None)``,
   checking its arguments (the config's validation builds the optimizer, so
   the factory's own ValueError is what a bad ``--config.optimizer_kwargs.eta`` reports);
2. add ``Entry("asam", "sam", asam, base="sgd")`` (and the ``adamw_asam``
   twin) to `_ENTRIES` below;
3. add its tests. `config.optimizer` accepts the name and
   `config.optimizer_kwargs` its options (``--config.optimizer_kwargs.eta=0.1``)
   with no edit of the config; `build_optimizer`, `benchmarks/*.py` and the
   tests that run every optimizer pick it up. A training-only constant that is
   no option (e.g. ASAM's mask) is bound in the factory:
   ``factory=functools.partial(asam, mask=...)``. If its state is a new type,
   make `needs_loss_fn` / `perturbs_params` recognise it (the registry test
   checks that they agree with the family).

Names, not a base x method product: ``config.optimizer`` stays one name per
optimizer (the original's ``msam``, ``sam``, ``adamw_msam``, ... unchanged;
the SGD base unprefixed, the others prefixed ``<base>_``), and the table lists
the pairs that are meant to be run. A product of every base (sgd, adamw, lion)
with every method would make 3 x 7 names, most never run by anyone and each
one more end-to-end test and benchmark row; any other pair is one line here
(``msam_of(base)`` and ``rst(base)`` take any optax base). Every entry's
constants are its own options with its factory's defaults (Lion's b1, b2 and
weight decay are Lion's, never Adam's).
"""

import dataclasses
import functools
import inspect
import types
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax

from msam_jax.optim.asam import all_but_biases, asam
from msam_jax.optim.baselines import adamw, sgd
from msam_jax.optim.esam import esam
from msam_jax.optim.gsam import gsam
from msam_jax.optim.looksam import looksam, looksam_sam_step
from msam_jax.optim.msam import adamw_msam, msam, msam_of
from msam_jax.optim.rst import rst, rst_coin
from msam_jax.optim.sam import sam

FAMILIES = ("base", "msam", "sam")  # what a training loop must know of an optimizer (module docstring)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One optimizer of the table.

  Attributes:
    name: what `config.optimizer` and the benchmarks call it.
    family: ``"base"``, ``"msam"`` or ``"sam"`` (module docstring).
    factory: builds the transformation from keyword hyper-parameters.
    base: the plain optimizer it builds on (`sgd`, `adamw`, `lion`): what a ``"sam"``
      entry wraps, and what any entry is compared against; itself for ``"base"``.
    config_fields: factory keyword -> the top-level config field a training run
      fills it from (ESAM's ``seed``: ``config.seed``); every other keyword
      except the scheduled ones (`injected`) is an option (`options`).
    rho_follows_lr: a training run schedules rho with the learning rate
      (GSAM: `schedules.gsam_rho`, config.rho its maximum) instead of
      `config.rho_schedule`.
    own_steps: for a ``"sam"`` entry that takes its second gradient on some
      updates only (LookSAM's every k-th, RST's draws): ``own_steps(counts,
      rho, hyperparams)`` -> which of the updates `counts` (0-based, with their
      `rho` values and the factory's keyword values) do; None: every update.
      `second_gradient_steps` reads it.
  """

  name: str
  family: str
  factory: Callable[..., optax.GradientTransformation]
  base: str
  config_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
  rho_follows_lr: bool = False
  own_steps: Callable[[np.ndarray, np.ndarray, Mapping[str, Any]], np.ndarray] | None = None

  @property
  def injected(self) -> tuple[str, ...]:
    """The scheduled hyper-parameters the factory takes (learning rate and/or rho)."""
    return {"base": ("learning_rate",), "msam": ("learning_rate", "rho"), "sam": ("rho",)}[self.family]

  @property
  def uses_rho(self) -> bool:
    return "rho" in self.injected

  @property
  def default_rho(self) -> float | None:
    """The factory's default rho, each method's own scale (MSAM 0.3, SAM 0.05, ASAM 0.5), or None without one.

    The factories' signatures are the one place these defaults live; the config
    (`msam_jax.training.set_optimizer`) and docs/choosing.md read them here.
    """
    rho = inspect.signature(self.factory).parameters.get("rho")
    return None if rho is None or rho.default is inspect.Parameter.empty else rho.default

  @property
  def own_options(self) -> dict[str, Any]:
    """The factory's own options and their defaults (module docstring), in signature order.

    Not options: the scheduled keywords, ``base``, the m-sharpness keywords, those in
    `config_fields`, and those a `functools.partial` factory binds.
    """
    bound = self.factory.keywords if isinstance(self.factory, functools.partial) else {}
    skip = {*self.injected, "base", *_GROUP_KEYWORDS, *self.config_fields, *bound}
    return {
      name: None if p.default is inspect.Parameter.empty else p.default
      for name, p in inspect.signature(self.factory).parameters.items()
      if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }

  @property
  def has_groups(self) -> bool:
    """Whether the factory takes ``group_size`` (m-sharpness: config.sam_group_size)."""
    return "group_size" in inspect.signature(self.factory).parameters


_GROUP_KEYWORDS = ("group_size", "axis_name")  # per-device m-sharpness: training/step_plan.py

_ASAM_TRAINING = functools.partial(asam, mask=all_but_biases)


def lion_msam(
  learning_rate: optax.ScalarOrSchedule,
  rho: optax.ScalarOrSchedule = 0.3,
  b1: float = 0.9,
  b2: float = 0.99,
  weight_decay: float = 1e-3,
) -> optax.GradientTransformationExtraArgs:
  """``msam_of(optax.lion(learning_rate, b1, b2, weight_decay), rho)``: MSAM along Lion's momentum."""
  return msam_of(optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay), rho=rho)


def _looksam_steps(counts, rho, hyperparams):
  return looksam_sam_step(counts, rho, hyperparams["k"])


def _rst_steps(counts, rho, hyperparams):
  del rho
  coin = functools.partial(rst_coin, p=hyperparams["p"], seed=hyperparams["seed"])
  return np.asarray(jax.vmap(coin)(counts))


# The order is the one `config.optimizer`'s error message and the benchmarks list.
_ENTRIES = (
  Entry("sgd", "base", sgd, base="sgd"),
  Entry("msam", "msam", msam, base="sgd"),
  Entry("sam", "sam", sam, base="sgd"),
  Entry("esam", "sam", esam, base="sgd", config_fields={"seed": "seed"}),
  Entry("looksam", "sam", looksam, base="sgd", own_steps=_looksam_steps),
  Entry("adamw", "base", adamw, base="adamw"),
  Entry("adamw_msam", "msam", adamw_msam, base="adamw"),
  Entry("adamw_sam", "sam", sam, base="adamw"),
  # ASAM as SamsungLabs/ASAM trains: kernels and norm scales adapted, biases not.
  Entry("asam", "sam", _ASAM_TRAINING, base="sgd"),
  Entry("adamw_asam", "sam", _ASAM_TRAINING, base="adamw"),
  # rho is GSAM's rho_max; training ties it to the learning rate (training/optimizer.py).
  Entry("gsam", "sam", gsam, base="sgd", rho_follows_lr=True),
  Entry("adamw_gsam", "sam", gsam, base="adamw", rho_follows_lr=True),
  # Beyond the original (issue 22): constants other than seed from the factory defaults.
  Entry("lion", "base", optax.lion, base="lion"),
  Entry("lion_msam", "msam", lion_msam, base="lion"),
  Entry("rst", "sam", rst, base="sgd", config_fields={"seed": "seed"}, own_steps=_rst_steps),
)

# Every optimizer: name -> `Entry`, read-only, in table order.
REGISTRY: Mapping[str, Entry] = types.MappingProxyType({e.name: e for e in _ENTRIES})


def names() -> tuple[str, ...]:
  """Every optimizer name, in table order."""
  return tuple(REGISTRY)


def get(name: str) -> Entry:
  """The entry called `name`; ValueError listing the valid names otherwise."""
  try:
    return REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}.") from None


def options(name: str) -> dict[str, Any]:
  """Every option of optimizer `name` with its default: its base's (``"sam"`` entries), then its own.

  What `config.optimizer_kwargs` holds for it (module docstring).
  """
  entry = get(name)
  base = options(entry.base) if entry.family == "sam" else {}
  return {**base, **entry.own_options}


def static_hyperparams(entry: Entry, config: Mapping[str, Any] | Any) -> dict[str, Any]:
  """Factory keyword -> value, for `entry`'s own constant hyper-parameters in a training `config`.

  Options from `config["optimizer_kwargs"]` (absent ones keep the factory default),
  `config_fields` from the config's own fields. `config` is anything indexable by
  field name (a dict, an `ml_collections.ConfigDict`).
  """
  kwargs = config["optimizer_kwargs"] or {}
  static = {option: kwargs[option] for option in entry.own_options if option in kwargs}
  return {**static, **{keyword: config[field] for keyword, field in entry.config_fields.items()}}


def second_gradient_steps(name: str, counts, rho, hyperparams: Mapping[str, Any]) -> np.ndarray | None:
  """Which updates of optimizer `name` take the SAM family's second gradient; None outside that family.

  `counts` are 0-based update counts (a NumPy integer array), `rho` their rho
  values (the schedule evaluated at them; a scalar for a constant), and
  `hyperparams` the factory's keyword values (`options` updated with the
  run's). An update takes it when its rho is above 0 (at rho 0 the step
  without it is the same step: ``second_gradient=False``, msam_jax.optim.sam)
  and the entry's `own_steps` pick it. What a training loop passes as
  ``second_gradient=`` to each update (``msam_jax.training.setup``).
  """
  entry = get(name)
  if entry.family != "sam":
    return None
  counts = np.asarray(counts)
  steps = np.broadcast_to(np.asarray(rho) > 0, counts.shape)
  if entry.own_steps is not None:
    steps = steps & entry.own_steps(counts, np.asarray(rho), hyperparams)
  return steps


def build(name: str, **hyperparams) -> optax.GradientTransformation:
  """The optimizer `name` with the given hyper-parameters, unwrapped (no injection, no clipping).

  Keywords are the factories' (``learning_rate``, ``rho``, ``momentum``,
  ``gamma``, ...); each optimizer takes the ones it uses and ignores the rest,
  so one set serves every optimizer; a missing one keeps the factory default.
  A ``"sam"`` entry wraps ``build(entry.base, **hyperparams)``.
  """
  entry = get(name)
  own = {*entry.injected, *entry.config_fields, *entry.own_options}
  taken = {k: v for k, v in hyperparams.items() if k in own}
  if entry.family == "sam":
    return entry.factory(build(entry.base, **hyperparams), **taken)
  return entry.factory(**taken)
