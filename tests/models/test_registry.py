"""build(): names, options and the errors bad arguments raise."""

import subprocess
import sys

import jax.numpy as jnp
import pytest

from msam_jax import models


def test_models_lists_every_family():
  assert set(models.MODELS) == {"wrn", "resnet_cifar", "resnet", "vit", "vgg", "cnn"}
  for name in models.MODELS:
    assert "dtype" in models.options(name)


def test_options_are_the_builder_keywords_with_defaults():
  assert models.options("wrn") == {"depth": 16, "width": 4, "dropout": 0.0, "dtype": jnp.float32}


def test_unknown_name_lists_the_models():
  with pytest.raises(ValueError, match="unknown model 'wideresnet'.*wrn, resnet_cifar, resnet"):
    models.build("wideresnet", 10)


def test_unknown_argument_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown argument\(s\) widen.*valid: depth, width, dropout"):
    models.build("wrn", 10, widen=4)
  with pytest.raises(ValueError, match="unknown argument.*batch_norm"):
    models.build("resnet", 10, batch_norm=True)


@pytest.mark.parametrize(
  "name,kwargs,message",
  [
    ("wrn", dict(depth=18), "6n \\+ 4"),
    ("wrn", dict(width=0), "width"),
    ("wrn", dict(dropout=1.0), "dropout"),
    ("resnet_cifar", dict(depth=20), "18, 34, 50, 101, 152"),
    ("resnet", dict(depth=56), "18, 34, 50, 101, 152"),
    ("resnet", dict(width=0), "width"),
    ("vit", dict(size="L"), "Ti, S, B"),
    ("vit", dict(patch_size=30), "divisible"),
    ("vit", dict(dim=30), "multiple of 4"),
    ("vit", dict(heads=0), "heads"),
    ("vgg", dict(depth=12), "11, 13, 16, 19"),
    ("vgg", dict(batch_norm="yes"), "batch_norm"),
    ("vgg", dict(dropout=-0.1), "dropout"),
    ("cnn", dict(width=-1), "width"),
    ("cnn", dict(dtype="int32"), "dtype"),
    ("cnn", dict(dtype="float33"), "dtype"),
    ("cnn", dict(dtype=None), "dtype"),
  ],
)
def test_bad_values_raise_naming_the_argument(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.build(name, 10, **kwargs)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match="num_classes"):
    models.build("cnn", num_classes)


def test_dtype_may_be_given_by_name():
  assert models.build("cnn", 10, dtype="bfloat16").dtype == jnp.bfloat16


@pytest.mark.slow  # a fresh interpreter
def test_importing_models_does_not_import_tensorflow():
  code = "import sys, msam_jax.models; assert 'tensorflow' not in sys.modules, 'tensorflow'"
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
