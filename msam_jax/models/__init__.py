"""Flax models of the MSAM experiments, built by name::

    model = build("wrn", num_classes=100, depth=16, width=4)
    variables = model.init(rng, images, train=False)        # images: NHWC float
    logits, updates = model.apply(variables, images, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": key})

Each family's file defines its modules and one builder function whose keyword
arguments are the model's options; adding a family is one line in `_BUILDERS`.
Every builder takes `dtype` (the computation dtype; parameters stay float32,
logits come out float32).
"""

from msam_jax._extras import require

require("models")

import inspect

import flax.linen as nn
import jax.numpy as jnp

from msam_jax import validation
from msam_jax.models import cnn, resnet, vgg, vit, wide_resnet

_BUILDERS = {
  "wrn": wide_resnet.wide_resnet,
  "resnet_cifar": resnet.resnet_cifar,
  "resnet": resnet.resnet_imagenet,
  "vit": vit.simple_vit,
  "vgg": vgg.vgg,
  "cnn": cnn.cnn,
}
MODELS = tuple(_BUILDERS)  # the names build() accepts


def options(name: str) -> dict:
  """The keyword arguments `build(name, ...)` accepts, with their defaults."""
  _check_name(name)
  parameters = inspect.signature(_BUILDERS[name]).parameters
  return {key: p.default for key, p in parameters.items() if p.kind is p.KEYWORD_ONLY}


def option_types(name: str) -> dict:
  """The annotated types of `options(name)` (`int | None` for an option that defaults to None)."""
  _check_name(name)
  parameters = inspect.signature(_BUILDERS[name]).parameters
  return {key: p.annotation for key, p in parameters.items() if p.kind is p.KEYWORD_ONLY}


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
  """The model `name` with `num_classes` outputs; raises ValueError on any bad argument."""
  valid = options(name)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(f"unknown argument(s) {', '.join(unknown)} for model {name!r}; valid: {', '.join(valid)}")
  validation.integer("num_classes", num_classes)
  if "dtype" in kwargs:
    kwargs["dtype"] = _float_dtype(kwargs["dtype"])
  return _BUILDERS[name](num_classes, **kwargs)


def _check_name(name: str) -> None:
  if name not in _BUILDERS:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


def _float_dtype(dtype) -> jnp.dtype:
  """Accepts a dtype or its name ("bfloat16"); only floating types make sense."""
  try:
    parsed = None if dtype is None else jnp.dtype(dtype)  # jnp.dtype(None) is float64
  except TypeError:
    parsed = None
  if parsed is None or not jnp.issubdtype(parsed, jnp.floating):
    validation.fail("dtype", dtype, "a floating type such as float32, bfloat16 or float16")
  return parsed


__all__ = ["MODELS", "build", "option_types", "options"]
