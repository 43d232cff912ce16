"""SimpleViT (Beyer, Zhai & Kolesnikov, 2022, "Better plain ViT baselines"), as the original has it.

The original uses lucidrains' SimpleViT: patches -> LayerNorm -> Linear ->
LayerNorm, a fixed 2-D sin-cos position embedding, pre-norm blocks of attention
(head dim 64, no bias on the qkv and output projections) and GELU MLP, mean
pooling over tokens, LayerNorm + linear head. No class token, no final norm
inside the transformer, no dropout, no batch norm. It sets no initialiser, so
every linear layer has torch's default (weight and bias uniform(+-1/sqrt(fan_in)))
and every LayerNorm scale 1 / bias 0, eps 1e-5.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msam_jax import validation
from msam_jax.models import torch_defaults as td

# size -> (dim, depth, mlp_dim, heads): the original's presets (it cites arXiv:2106.04560, Table 2).
SIZES = {
  "Ti": (192, 12, 768, 3),
  "S": (384, 12, 1536, 6),
  "B": (768, 12, 3072, 12),
}
HEAD_DIM = 64


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(b, H, W, c) -> (b, H/p, W/p, p*p*c), each patch flattened in (row, column, channel) order.

  The order of the original's `'b c (h p1) (w p2) -> b h w (p1 p2 c)'`.
  """
  b, height, width, channels = images.shape
  p = patch_size
  x = images.reshape(b, height // p, p, width // p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height // p, width // p, p * p * channels)


def posemb_sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """(height * width, dim) fixed embedding: [sin x, cos x, sin y, cos y] at dim/4 frequencies.

  Patches are numbered row-major; x is the column, y the row, and the frequency
  of band i is temperature^(-i / (dim/4 - 1)), as in the original.
  """
  if dim % 4:
    validation.fail("vit dim", dim, "a multiple of 4 for the sin-cos embedding")
  y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1))
  y = y.reshape(-1)[:, None] * omega[None, :]
  x = x.reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class Attention(nn.Module):
  """Pre-norm multi-head self-attention with one fused, bias-free qkv projection."""

  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, dim = x.shape
    inner = self.heads * HEAD_DIM
    x = td.layer_norm(dtype=self.dtype, name="norm")(x)
    qkv = td.torch_linear(3 * inner, dim, use_bias=False, dtype=self.dtype, name="to_qkv")(x)
    q, k, v = (t.reshape(b, n, self.heads, HEAD_DIM) for t in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * HEAD_DIM**-0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, inner)
    return td.torch_linear(dim, inner, use_bias=False, dtype=self.dtype, name="to_out")(out)


class FeedForward(nn.Module):
  """Pre-norm MLP: LayerNorm, Linear, exact (erf) GELU as torch.nn.GELU, Linear."""

  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x = td.layer_norm(dtype=self.dtype, name="norm")(x)
    x = td.torch_linear(self.mlp_dim, dim, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return td.torch_linear(dim, self.mlp_dim, dtype=self.dtype, name="fc2")(x)


class SimpleViT(nn.Module):
  """Takes (b, image_size, image_size, c) images; the patch grid fixes the position embedding."""

  num_classes: int
  image_size: int
  patch_size: int
  dim: int
  depth: int
  heads: int
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train  # no dropout, no batch norm
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(
        f"vit was built for {self.image_size}x{self.image_size} images, got {images.shape[1]}x{images.shape[2]}"
      )
    patches = patchify(images, self.patch_size)
    b, h, w, patch_dim = patches.shape
    x = td.layer_norm(dtype=self.dtype, name="patch_norm")(patches)
    x = td.torch_linear(self.dim, patch_dim, dtype=self.dtype, name="patch_embedding")(x)
    x = td.layer_norm(dtype=self.dtype, name="embedding_norm")(x)
    x = x.reshape(b, h * w, self.dim) + jnp.asarray(posemb_sincos_2d(h, w, self.dim), x.dtype)
    for layer in range(self.depth):
      x = x + Attention(self.heads, self.dtype, name=f"block{layer + 1}_attention")(x)
      x = x + FeedForward(self.mlp_dim, self.dtype, name=f"block{layer + 1}_mlp")(x)
    x = jnp.mean(x, axis=1)
    x = td.layer_norm(dtype=self.dtype, name="head_norm")(x)
    x = td.torch_linear(self.num_classes, self.dim, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


def simple_vit(
  num_classes: int,
  *,
  size: str = "S",
  patch_size: int = 32,
  image_size: int = 224,
  depth: int | None = None,
  dim: int | None = None,
  mlp_dim: int | None = None,
  heads: int | None = None,
  dtype=jnp.float32,
) -> SimpleViT:
  """`build("vit", ...)`: SimpleViT-{Ti,S,B}/patch_size for image_size-px images.

  `depth`, `dim`, `mlp_dim`, `heads` override the size preset (for small test models).
  """
  validation.one_of("vit size", size, SIZES)
  preset_dim, preset_depth, preset_mlp_dim, preset_heads = SIZES[size]
  dim = preset_dim if dim is None else dim
  depth = preset_depth if depth is None else depth
  mlp_dim = preset_mlp_dim if mlp_dim is None else mlp_dim
  heads = preset_heads if heads is None else heads
  for name, value in (
    ("patch_size", patch_size),
    ("image_size", image_size),
    ("depth", depth),
    ("dim", dim),
    ("mlp_dim", mlp_dim),
    ("heads", heads),
  ):
    validation.integer(f"vit {name}", value)
  if image_size % patch_size:
    validation.fail("vit image_size", image_size, f"divisible by patch_size {patch_size}")
  if dim % 4 or dim < 8:
    validation.fail("vit dim", dim, "a multiple of 4 and >= 8 (sin-cos embedding)")
  return SimpleViT(num_classes, image_size, patch_size, dim, depth, heads, mlp_dim, dtype)
