"""Initial parameter distributions: the original's initialisers, or torch's defaults where it sets none."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from msam_jax import models


def initial_variables(model, image_shape):
  images = jnp.zeros((1, *image_shape), jnp.float32)
  init = jax.jit(lambda key: model.init(key, images, train=False))
  variables = init(jax.random.key(0, impl="rbg"))  # rbg: compiles much faster than threefry
  return jax.tree.map(np.asarray, variables)


def leaves(tree, suffix):
  """{path: array} of the leaves whose path ends with `suffix`."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  return {path: value for path, value in flat.items() if path.endswith(suffix)}


def assert_normal(w, std, path):
  """N(0, std^2), not truncated: the largest of many draws lies beyond 2.5 std."""
  assert abs(w.std() / std - 1) < 0.15, (path, w.std(), std)
  assert abs(w.mean()) < 0.15 * std, path
  if w.size > 2000:
    assert np.abs(w).max() > 2.5 * std, path


def assert_uniform(w, bound, path):
  """uniform(-bound, bound): within the bound, reaching near it, std bound/sqrt(3)."""
  assert np.abs(w).max() <= bound * (1 + 1e-6), path
  if w.size > 100:
    assert np.abs(w).max() > 0.9 * bound, path
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.15, path


def conv_fans(kernel):
  height, width, fan_in, fan_out = kernel.shape
  return height * width * fan_in, height * width * fan_out


def assert_batch_norm_identity(variables):
  for path, scale in leaves(variables["params"], "scale").items():
    np.testing.assert_array_equal(scale, 1.0, err_msg=path)
  for path, bias in leaves(variables["params"], "bias").items():
    if "/bn" in path or "BatchNorm" in path:
      np.testing.assert_array_equal(bias, 0.0, err_msg=path)
  for path, mean in leaves(variables["batch_stats"], "mean").items():
    np.testing.assert_array_equal(mean, 0.0, err_msg=path)
  for path, var in leaves(variables["batch_stats"], "var").items():
    np.testing.assert_array_equal(var, 1.0, err_msg=path)


@pytest.mark.slow  # a WRN-16-4: seconds of initialisation
def test_wide_resnet_he_fan_out_convolutions_and_zero_head_bias():
  variables = initial_variables(models.build("wrn", 100, depth=16, width=4), (32, 32, 3))
  kernels = {p: k for p, k in leaves(variables["params"], "kernel").items() if k.ndim == 4}
  assert len(kernels) == 1 + 3 * 2 * 2 + 3  # stem, two convs per block, three shortcuts
  for path, kernel in kernels.items():
    assert_normal(kernel, math.sqrt(2 / conv_fans(kernel)[1]), path)
  head = variables["params"]["head"]
  assert_uniform(head["kernel"], 1 / math.sqrt(256), "head")
  np.testing.assert_array_equal(head["bias"], 0.0)
  assert_batch_norm_identity(variables)


def test_cifar_resnet_has_torch_default_initialisation():
  variables = initial_variables(models.build("resnet_cifar", 10, depth=18, width=16), (32, 32, 3))
  for path, kernel in leaves(variables["params"], "kernel").items():
    fan_in = conv_fans(kernel)[0] if kernel.ndim == 4 else kernel.shape[0]
    assert_uniform(kernel, 1 / math.sqrt(fan_in), path)
  fc = variables["params"]["fc"]
  assert_uniform(fc["bias"], 1 / math.sqrt(128), "fc/bias")
  assert np.any(fc["bias"] != 0)
  assert_batch_norm_identity(variables)


@pytest.mark.slow  # an ImageNet ResNet-18: seconds of initialisation
def test_imagenet_resnet_has_torchvision_initialisation():
  variables = initial_variables(models.build("resnet", 10, depth=18, width=16), (32, 32, 3))
  kernels = {p: k for p, k in leaves(variables["params"], "kernel").items() if k.ndim == 4}
  for path, kernel in kernels.items():
    assert_normal(kernel, math.sqrt(2 / conv_fans(kernel)[1]), path)
  fc = variables["params"]["fc"]  # torchvision leaves the linear layer at torch's default
  assert_uniform(fc["kernel"], 1 / math.sqrt(128), "fc/kernel")
  assert_uniform(fc["bias"], 1 / math.sqrt(128), "fc/bias")
  assert np.any(fc["bias"] != 0)
  assert_batch_norm_identity(variables)


def test_vgg_has_torchvision_initialisation():
  model = models.build("vgg", 10, depth=11, batch_norm=True, width=16, classifier_width=256)
  variables = initial_variables(model, (32, 32, 3))
  for path, kernel in leaves(variables["params"], "kernel").items():
    if kernel.ndim == 4:
      assert_normal(kernel, math.sqrt(2 / conv_fans(kernel)[1]), path)
      np.testing.assert_array_equal(variables["params"][path.split("/")[0]]["bias"], 0.0)
    else:
      assert_normal(kernel, 0.01, path)
      np.testing.assert_array_equal(variables["params"][path.split("/")[0]]["bias"], 0.0)
  assert_batch_norm_identity(variables)


def test_vit_has_torch_default_initialisation():
  model = models.build("vit", 10, size="Ti", depth=1, dim=64, heads=2, mlp_dim=256, patch_size=8, image_size=16)
  params = initial_variables(model, (16, 16, 3))["params"]
  for path, kernel in leaves(params, "kernel").items():
    assert_uniform(kernel, 1 / math.sqrt(kernel.shape[0]), path)
    bias_path = path[: -len("kernel")] + "bias"
    bias = traverse_util.flatten_dict(params, sep="/").get(bias_path)
    if bias is not None:
      assert_uniform(bias, 1 / math.sqrt(kernel.shape[0]), bias_path)
  attention = params["block1_attention"]
  assert set(attention) == {"norm", "to_qkv", "to_out"}
  assert set(attention["to_qkv"]) == {"kernel"} and set(attention["to_out"]) == {"kernel"}
  for path, scale in leaves(params, "scale").items():
    np.testing.assert_array_equal(scale, 1.0, err_msg=path)
