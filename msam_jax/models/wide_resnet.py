"""Wide residual networks (Zagoruyko & Komodakis, 2016), as the MSAM original builds them.

Pre-activation blocks (BN-ReLU before each convolution), channels
16 -> 16k -> 32k -> 64k, a 1x1 shortcut convolution where the channel count
changes, a final BN-ReLU, global average pooling and a linear head.
Initialisation as the original: He-normal (fan-out) convolutions, batch norm
scale 1 / bias 0, the head's weight at torch's default and its bias at zero.
"""

import flax.linen as nn
import jax.numpy as jnp

from msam_jax import validation
from msam_jax.models import torch_defaults as td


class WideResNetBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut.

  As in the original, when the shape changes the shortcut convolution reads the
  pre-activated input; otherwise the identity shortcut carries the raw input.
  """

  features: int
  strides: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    preactivated = nn.relu(td.batch_norm(train, self.dtype, name="bn1")(x))
    if x.shape[-1] == self.features and self.strides == 1:
      shortcut = x
    else:
      shortcut = td.conv(self.features, 1, self.strides, dtype=self.dtype, name="conv_shortcut")(preactivated)
    y = td.conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(preactivated)
    y = nn.relu(td.batch_norm(train, self.dtype, name="bn2")(y))
    if self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = td.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-width; depth = 6n + 4 with n blocks per stage."""

  num_classes: int
  depth: int = 16
  width: int = 4
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    blocks_per_stage = (self.depth - 4) // 6
    x = td.conv(16, 3, dtype=self.dtype, name="conv1")(images)
    for stage, (channels, strides) in enumerate(((16, 1), (32, 2), (64, 2))):
      for block in range(blocks_per_stage):
        x = WideResNetBlock(
          channels * self.width,
          strides if block == 0 else 1,
          self.dropout,
          self.dtype,
          name=f"stage{stage + 1}_block{block + 1}",
        )(x, train)
    x = nn.relu(td.batch_norm(train, self.dtype, name="bn_final")(x))
    # The original's avg_pool2d(8) on the 8x8 map of a 32-px input: a global mean.
    x = jnp.mean(x, axis=(1, 2))
    x = td.torch_linear(self.num_classes, x.shape[-1], zero_bias=True, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


def wide_resnet(
  num_classes: int, *, depth: int = 16, width: int = 4, dropout: float = 0.0, dtype=jnp.float32
) -> WideResNet:
  """`build("wrn", ...)`: depth 6n+4 (16, 22, 28, ...), width factor k, dropout rate."""
  validation.integer("wrn depth", depth, 10)
  if (depth - 4) % 6:
    validation.fail("wrn depth", depth, "6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
  validation.integer("wrn width", width)
  validation.in_interval("wrn dropout", dropout, 0.0, 1.0, low_closed=True, high_closed=False)
  return WideResNet(num_classes, depth, width, float(dropout), dtype)
