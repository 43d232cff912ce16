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
  ``loss_fn=`` (and ``losses=``).

The learning rate and rho are the hyper-parameters a run schedules (config
fields `learning_rate`, `rho` and their schedules); every other keyword is a
constant, read from the config field that `config_fields` names.

Adding an optimizer (say ``asam`` around SGD and ``adamw_asam`` around AdamW):

1. write ``msam_jax/optim/asam.py`` with ``asam(base, rho, eta, mask)``;
2. add ``Entry("asam", "sam", asam, base="sgd", config_fields={"eta": "asam_eta"})``
   (and the ``adamw_asam`` twin) to `_ENTRIES` below, and the config fields to
   ``msam_jax/training/config.py:base_config`` (with their checks in `validate`);
3. add its tests. `config.optimizer` accepts the name, `build_optimizer`,
   `benchmarks/*.py` and the tests that run every optimizer pick it up. A
   training-only constant that is no config field (e.g. ASAM's mask) goes into
   the factory: ``factory=functools.partial(asam, mask=...)``. If its state is
   a new type, make `needs_loss_fn` / `perturbs_params` recognise it (the
   registry test checks that they agree with the family).

Names, not a base x method product: ``config.optimizer`` stays one name per
optimizer (the original's ``msam``, ``sam``, ``adamw_msam``, ... unchanged;
the SGD base unprefixed, the others prefixed ``<base>_``), and the table lists
the pairs that are meant to be run. A product of every base (sgd, adamw, lion)
with every method would make 3 x 7 names, most never run by anyone and each
one more end-to-end test and benchmark row; any other pair is one line here
(``msam_of(base)`` and ``rst(base)`` take any optax base). Entries added after
the original's (``lion``, ``lion_msam``, ``rst``) take their own constants
(Lion's b1, b2, weight decay; RST's p) from their factory defaults rather than
from config fields named for another optimizer (Adam's ``b1``).
"""

import dataclasses
import functools
import inspect
import types
from typing import Any, Callable, Mapping

import optax

from msam_jax.optim.asam import all_but_biases, asam
from msam_jax.optim.baselines import adamw, sgd
from msam_jax.optim.esam import esam
from msam_jax.optim.gsam import gsam
from msam_jax.optim.looksam import looksam
from msam_jax.optim.msam import adamw_msam, msam, msam_of
from msam_jax.optim.rst import rst
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
    config_fields: factory keyword -> config field, for the constant
      hyper-parameters (learning rate and rho are not listed: see `injected`).
    rho_follows_lr: a training run schedules rho with the learning rate
      (GSAM: `schedules.gsam_rho`, config.rho its maximum) instead of
      `config.rho_schedule`.
  """

  name: str
  family: str
  factory: Callable[..., optax.GradientTransformation]
  base: str
  config_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
  rho_follows_lr: bool = False

  @property
  def injected(self) -> tuple[str, ...]:
    """The scheduled hyper-parameters the factory takes: learning rate and/or rho."""
    return {"base": ("learning_rate",), "msam": ("learning_rate", "rho"), "sam": ("rho",)}[self.family]

  @property
  def uses_rho(self) -> bool:
    return "rho" in self.injected

  @property
  def has_groups(self) -> bool:
    """Whether the factory takes ``group_size`` (m-sharpness: config.sam_group_size)."""
    return "group_size" in inspect.signature(self.factory).parameters


_SGD_FIELDS = {"momentum": "momentum", "weight_decay": "weight_decay"}
_ADAM_FIELDS = {"b1": "b1", "b2": "b2", "eps": "eps", "weight_decay": "weight_decay"}

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


# The order is the one `config.optimizer`'s error message and the benchmarks list.
_ENTRIES = (
  Entry("sgd", "base", sgd, base="sgd", config_fields={**_SGD_FIELDS, "nesterov": "nesterov"}),
  Entry("msam", "msam", msam, base="sgd", config_fields=_SGD_FIELDS),
  Entry("sam", "sam", sam, base="sgd"),
  Entry("esam", "sam", esam, base="sgd", config_fields={"beta": "esam_beta", "gamma": "esam_gamma", "seed": "seed"}),
  Entry("looksam", "sam", looksam, base="sgd", config_fields={"k": "looksam_k", "alpha": "looksam_alpha"}),
  Entry("adamw", "base", adamw, base="adamw", config_fields=_ADAM_FIELDS),
  Entry("adamw_msam", "msam", adamw_msam, base="adamw", config_fields=_ADAM_FIELDS),
  Entry("adamw_sam", "sam", sam, base="adamw"),
  # ASAM as SamsungLabs/ASAM trains: kernels and norm scales adapted, biases not.
  Entry("asam", "sam", _ASAM_TRAINING, base="sgd", config_fields={"eta": "asam_eta"}),
  Entry("adamw_asam", "sam", _ASAM_TRAINING, base="adamw", config_fields={"eta": "asam_eta"}),
  # rho is GSAM's rho_max; training ties it to the learning rate (training/optimizer.py).
  Entry("gsam", "sam", gsam, base="sgd", config_fields={"alpha": "gsam_alpha"}, rho_follows_lr=True),
  Entry("adamw_gsam", "sam", gsam, base="adamw", config_fields={"alpha": "gsam_alpha"}, rho_follows_lr=True),
  # Beyond the original (issue 22): constants other than seed from the factory defaults.
  Entry("lion", "base", optax.lion, base="lion"),
  Entry("lion_msam", "msam", lion_msam, base="lion"),
  Entry("rst", "sam", rst, base="sgd", config_fields={"seed": "seed"}),
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


def static_hyperparams(entry: Entry, config: Mapping[str, Any] | Any) -> dict[str, Any]:
  """Factory keyword -> value of its config field, for `entry`'s constant hyper-parameters.

  `config` is anything indexable by field name (a dict, an `ml_collections.ConfigDict`).
  """
  return {keyword: config[field] for keyword, field in entry.config_fields.items()}


def build(name: str, **hyperparams) -> optax.GradientTransformation:
  """The optimizer `name` with the given hyper-parameters, unwrapped (no injection, no clipping).

  Keywords are the factories' (``learning_rate``, ``rho``, ``momentum``,
  ``gamma``, ...); each optimizer takes the ones it uses and ignores the rest,
  so one set serves every optimizer; a missing one keeps the factory default.
  A ``"sam"`` entry wraps ``build(entry.base, **hyperparams)``.
  """
  entry = get(name)
  taken = {k: v for k, v in hyperparams.items() if k in entry.injected or k in entry.config_fields}
  if entry.family == "sam":
    return entry.factory(build(entry.base, **hyperparams), **taken)
  return entry.factory(**taken)
