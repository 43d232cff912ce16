"""PyTorch's layer defaults, expressed as Flax settings.

The models reproduce experiments that were run in PyTorch, so every place where
the original relied on a PyTorch default (rather than setting an initialiser
itself) uses the equivalent defined here.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.BatchNorm2d(momentum=0.1, eps=1e-5): torch's momentum weights the new
# batch statistic, Flax's weights the running average, hence 1 - 0.1.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default (Flax's is 1e-6).

# torch's default weight init for nn.Linear and nn.Conv2d is
# kaiming_uniform_(a=sqrt(5)), i.e. uniform(+-1/sqrt(fan_in)): variance 1/(3 fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2/fan_out), untruncated.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """torch's default bias init, uniform(+-1/sqrt(fan_in)); needs the layer's fan-in."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def batch_norm(train: bool, dtype, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm2d as torch configures it: scale 1, bias 0, momentum 0.1, eps 1e-5.

  Without an ``axis_name``: under one ``jax.jit`` with the batch sharded over a
  mesh, the batch statistics are already those of the global batch.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BATCH_NORM_MOMENTUM,
    epsilon=BATCH_NORM_EPSILON,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def conv(
  features: int,
  kernel_size: int,
  strides: int = 1,
  *,
  use_bias: bool = False,
  kernel_init=he_normal_fan_out,
  dtype=jnp.float32,
  name: str | None = None,
) -> nn.Conv:
  """A square convolution padded like torch's ``padding=kernel_size // 2``.

  Flax's ``"SAME"`` pads stride-2 convolutions asymmetrically (0 before, 1 after
  for even inputs); torch pads both sides, which changes which pixels are seen.
  """
  pad = kernel_size // 2
  return nn.Conv(
    features,
    (kernel_size, kernel_size),
    strides=(strides, strides),
    padding=((pad, pad), (pad, pad)),
    use_bias=use_bias,
    kernel_init=kernel_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def torch_linear(
  features: int,
  fan_in: int,
  *,
  use_bias: bool = True,
  zero_bias: bool = False,
  dtype=jnp.float32,
  name: str | None = None,
) -> nn.Dense:
  """nn.Linear with torch's default init (optionally with the bias set to zero)."""
  bias_init = nn.initializers.zeros if zero_bias else torch_default_bias_init(fan_in)
  return nn.Dense(
    features,
    use_bias=use_bias,
    kernel_init=torch_default_kernel_init,
    bias_init=bias_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


layer_norm = functools.partial(nn.LayerNorm, epsilon=LAYER_NORM_EPSILON, param_dtype=jnp.float32)
