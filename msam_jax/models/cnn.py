"""A small convolutional network for the 8x8 digits dataset, quick tests and benchmarks.

Not part of the original: three conv3x3-BN-ReLU layers (`width`, `2 width`
strided, `2 width` channels), global average pooling and a linear head. It has
batch norm so that it exercises the same `batch_stats` path as the ResNets.
Convolutions He-normal (fan-out) like the ResNets; the head keeps Flax's
default init (LeCun-normal weight, zero bias).
"""

import flax.linen as nn
import jax.numpy as jnp

from msam_jax import validation
from msam_jax.models import torch_defaults as td


class CNN(nn.Module):
  num_classes: int
  width: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images
    for features, strides in ((self.width, 1), (2 * self.width, 2), (2 * self.width, 1)):
      x = td.conv(features, 3, strides, dtype=self.dtype)(x)
      x = nn.relu(td.batch_norm(train, self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)


def cnn(num_classes: int, *, width: int = 32, dtype=jnp.float32) -> CNN:
  """`build("cnn", ...)`: `width` is the first layer's channel count."""
  validation.integer("cnn width", width)
  return CNN(num_classes, width, dtype)
