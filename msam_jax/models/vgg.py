"""VGG (Simonyan & Zisserman, 2015) as torchvision builds it, which the original uses unchanged.

Configurations A/B/D/E (depth 11/13/16/19) of 3x3 convolutions (with bias) and
2x2 max-pools, optionally with batch norm after each convolution; then
torchvision's head: adaptive average pool to 7x7, flatten, Linear(25088, 4096),
ReLU, Dropout(0.5), Linear(4096, 4096), ReLU, Dropout(0.5), Linear(4096, classes).
torchvision's init: He-normal (fan-out) convolutions with zero bias, batch norm
1 / 0, linear weights N(0, 0.01) with zero bias.

32-px inputs (CIFAR): the five max-pools leave a 1x1 map, and the adaptive pool
copies that one value into all 7x7 cells (exactly what torchvision does), so
the head keeps its 25088 inputs and its 123.6M parameters although it sees
only 512 distinct numbers. The original ran VGG like this; set
`classifier_width` for a smaller head if that is not the experiment you want.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msam_jax import validation
from msam_jax.models import torch_defaults as td

# depth -> output channels of each 3x3 conv ("M": 2x2 max-pool), for width 64.
CONFIGS = {
  11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
  19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
POOLED_SIZE = 7


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) averaging weights of torch's adaptive pool: bin i = [floor(i*in/out), ceil((i+1)*in/out))."""
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d(out_size) for NHWC inputs (up- or down-sampling)."""
  rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], out_size), x.dtype)
  cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], out_size), x.dtype)
  return jnp.einsum("nhwc,ih,jw->nijc", x, rows, cols)


class VGG(nn.Module):
  num_classes: int
  config: tuple
  batch_norm: bool = False
  width: int = 64
  classifier_width: int = 4096
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images
    for layer in self.config:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = td.conv(layer * self.width // 64, 3, use_bias=True, dtype=self.dtype)(x)
      if self.batch_norm:
        x = td.batch_norm(train, self.dtype)(x)
      x = nn.relu(x)
    x = adaptive_avg_pool(x, POOLED_SIZE)
    # Flattened (h, w, c), not torch's (c, h, w): a fixed permutation of the rows
    # of the first linear layer, so the same model and the same init distribution.
    x = x.reshape(x.shape[0], -1)
    dense = functools.partial(
      nn.Dense,
      kernel_init=nn.initializers.normal(0.01),
      bias_init=nn.initializers.zeros,
      dtype=self.dtype,
      param_dtype=jnp.float32,
    )
    for _ in range(2):
      x = nn.relu(dense(self.classifier_width)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return dense(self.num_classes)(x).astype(jnp.float32)


def vgg(
  num_classes: int,
  *,
  depth: int = 16,
  batch_norm: bool = False,
  width: int = 64,
  classifier_width: int = 4096,
  dropout: float = 0.5,
  dtype=jnp.float32,
) -> VGG:
  """`build("vgg", ...)`: torchvision's vgg{depth}[_bn].

  `width` (64) is the first stage's channel count, the others scale with it;
  `classifier_width` (4096) the hidden width of the head. Both exist for small
  test models and default to torchvision's values.
  """
  validation.one_of("vgg depth", depth, CONFIGS)
  validation.boolean("vgg batch_norm", batch_norm)
  validation.integer("vgg width", width)
  validation.integer("vgg classifier_width", classifier_width)
  validation.in_interval("vgg dropout", dropout, 0.0, 1.0, low_closed=True, high_closed=False)
  return VGG(num_classes, CONFIGS[depth], batch_norm, width, classifier_width, float(dropout), dtype)
