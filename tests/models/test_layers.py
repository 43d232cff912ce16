"""The pieces whose exact arithmetic the original fixes: ViT patches and position embedding, VGG pooling."""

import numpy as np
import pytest

from msam_jax.models import vgg, vit


def test_patchify_orders_each_patch_row_column_channel():
  """einops 'b c (h p1) (w p2) -> b h w (p1 p2 c)' on channels-last images."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 6, 9, 2)).astype(np.float32)
  patches = np.asarray(vit.patchify(images, 3))
  assert patches.shape == (2, 2, 3, 3 * 3 * 2)
  for b in range(2):
    for h in range(2):
      for w in range(3):
        expected = [images[b, 3 * h + p1, 3 * w + p2, c] for p1 in range(3) for p2 in range(3) for c in range(2)]
        np.testing.assert_array_equal(patches[b, h, w], expected)


def test_posemb_sincos_2d_values():
  dim, height, width = 16, 3, 5
  pe = vit.posemb_sincos_2d(height, width, dim)
  assert pe.shape == (height * width, dim)
  quarter = dim // 4
  omega = 10_000.0 ** -(np.arange(quarter) / (quarter - 1))  # 1 ... 1/10000
  assert omega[0] == 1.0 and np.isclose(omega[-1], 1e-4)
  for index in range(height * width):
    row, col = divmod(index, width)  # patches are numbered row-major
    expected = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(pe[index], expected, rtol=1e-6, atol=1e-6)


def test_posemb_needs_a_multiple_of_four():
  with pytest.raises(ValueError, match="multiple of 4"):
    vit.posemb_sincos_2d(2, 2, 10)


@pytest.mark.parametrize(
  "in_size,out_size,bins",
  [
    (14, 7, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)]),
    (1, 7, [(0, 1)] * 7),  # a 1x1 map (VGG on 32 px) is copied into every cell
    (10, 7, [(0, 2), (1, 3), (2, 5), (4, 6), (5, 8), (7, 9), (8, 10)]),  # overlapping bins
    (3, 7, [(0, 1), (0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 3)]),
  ],
)
def test_adaptive_avg_pool_uses_torch_bins(in_size, out_size, bins):
  """Bin i averages [floor(i*in/out), ceil((i+1)*in/out)), as torch's AdaptiveAvgPool2d."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, in_size, in_size, 3)).astype(np.float32)
  pooled = np.asarray(vgg.adaptive_avg_pool(x, out_size))
  assert pooled.shape == (2, out_size, out_size, 3)
  for i, (r0, r1) in enumerate(bins):
    for j, (c0, c1) in enumerate(bins):
      np.testing.assert_allclose(pooled[:, i, j], x[:, r0:r1, c0:c1].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
