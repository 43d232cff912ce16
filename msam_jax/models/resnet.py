"""ResNets (He et al., 2016): the CIFAR variant and torchvision's ImageNet ResNet.

Both share the blocks (post-activation, projection shortcut = 1x1 conv + BN
where the shape changes, the bottleneck's stride on its 3x3 convolution) and
differ in the stem, the pooling and the initialisation, following the original:

- `resnet_cifar` (the original's resnet_CIFAR.py): 3x3 stride-1 stem, no
  max-pool, average pool of the 4x4 final map. It sets no initialiser, so every
  layer has torch's default: convolutions and the linear layer
  uniform(+-1/sqrt(fan_in)) (`td.torch_default_kernel_init`), the linear bias
  likewise, batch norm scale 1 / bias 0.
- `resnet` (torchvision's ResNet, used unchanged by the original): 7x7 stride-2
  stem and a 3x3 stride-2 max-pool, adaptive average pool. torchvision sets
  He-normal (fan-out) convolutions and batch norm 1 / 0 and leaves the linear
  layer at torch's default (weight and bias uniform(+-1/sqrt(fan_in))).
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from msam_jax import validation
from msam_jax.models import torch_defaults as td

# depth -> (bottleneck?, blocks per stage)
_STAGES = {
  18: (False, (2, 2, 2, 2)),
  34: (False, (3, 4, 6, 3)),
  50: (True, (3, 4, 6, 3)),
  101: (True, (3, 4, 23, 3)),
  152: (True, (3, 8, 36, 3)),
}
DEPTHS = tuple(_STAGES)


class _Shortcut(nn.Module):
  """Identity, or 1x1 conv + BN when the stride or the channel count changes."""

  features: int
  strides: int
  kernel_init: nn.initializers.Initializer
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train: bool):
    if self.strides == 1 and x.shape[-1] == self.features:
      return x
    x = td.conv(self.features, 1, self.strides, kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
    return td.batch_norm(train, self.dtype, name="bn")(x)


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU. Output: `features` channels."""

  features: int
  strides: int
  kernel_init: nn.initializers.Initializer
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(td.conv, kernel_init=self.kernel_init, dtype=self.dtype)
    norm = functools.partial(td.batch_norm, train, self.dtype)
    y = nn.relu(norm(name="bn1")(conv(self.features, 3, self.strides, name="conv1")(x)))
    y = norm(name="bn2")(conv(self.features, 3, name="conv2")(y))
    shortcut = _Shortcut(self.features, self.strides, self.kernel_init, self.dtype, name="shortcut")(x, train)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, add, ReLU. Output: 4 x `features`."""

  features: int
  strides: int
  kernel_init: nn.initializers.Initializer
  dtype: jnp.dtype = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(td.conv, kernel_init=self.kernel_init, dtype=self.dtype)
    norm = functools.partial(td.batch_norm, train, self.dtype)
    y = nn.relu(norm(name="bn1")(conv(self.features, 1, name="conv1")(x)))
    y = nn.relu(norm(name="bn2")(conv(self.features, 3, self.strides, name="conv2")(y)))
    out_features = self.features * self.expansion
    y = norm(name="bn3")(conv(out_features, 1, name="conv3")(y))
    shortcut = _Shortcut(out_features, self.strides, self.kernel_init, self.dtype, name="shortcut")(x, train)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """Four stages of `width * (1, 2, 4, 8)` channels; `imagenet_stem` picks the variant."""

  num_classes: int
  stage_sizes: tuple[int, ...]
  bottleneck: bool
  imagenet_stem: bool
  kernel_init: nn.initializers.Initializer
  width: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.imagenet_stem:
      x = td.conv(self.width, 7, 2, kernel_init=self.kernel_init, dtype=self.dtype, name="conv1")(images)
      x = nn.relu(td.batch_norm(train, self.dtype, name="bn1")(x))
      # torch's MaxPool2d(3, 2, padding=1) pads with -inf, as Flax's max_pool does.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = td.conv(self.width, 3, 1, kernel_init=self.kernel_init, dtype=self.dtype, name="conv1")(images)
      x = nn.relu(td.batch_norm(train, self.dtype, name="bn1")(x))
    block_cls = Bottleneck if self.bottleneck else BasicBlock
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = block_cls(
          self.width * 2**stage, strides, self.kernel_init, self.dtype, name=f"layer{stage + 1}_block{block + 1}"
        )(x, train)
    # imagenet: AdaptiveAvgPool2d(1); cifar: avg_pool2d(4) of the 4x4 map of a
    # 32-px input. Both are the global mean (other input sizes: see docs/models.md).
    x = jnp.mean(x, axis=(1, 2))
    x = td.torch_linear(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


def _check(name: str, depth, width) -> None:
  validation.one_of(f"{name} depth", depth, DEPTHS)
  validation.integer(f"{name} width", width)  # channels of the first stage, 64 in the original


def resnet_cifar(num_classes: int, *, depth: int = 18, width: int = 64, dtype=jnp.float32) -> ResNet:
  """`build("resnet_cifar", ...)`: the original's CIFAR ResNet (torch default init)."""
  _check("resnet_cifar", depth, width)
  bottleneck, stages = _STAGES[depth]
  return ResNet(
    num_classes,
    stages,
    bottleneck,
    imagenet_stem=False,
    kernel_init=td.torch_default_kernel_init,
    width=width,
    dtype=dtype,
  )


def resnet_imagenet(num_classes: int, *, depth: int = 50, width: int = 64, dtype=jnp.float32) -> ResNet:
  """`build("resnet", ...)`: torchvision's ResNet (He-normal fan-out convolutions)."""
  _check("resnet", depth, width)
  bottleneck, stages = _STAGES[depth]
  return ResNet(
    num_classes, stages, bottleneck, imagenet_stem=True, kernel_init=td.he_normal_fan_out, width=width, dtype=dtype
  )
