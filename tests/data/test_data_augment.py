"""Each augmentation's statistics against its definition."""
import numpy as np
import pytest
import tensorflow as tf

from msam_jax.data import augment, cifar

NUM_DRAWS = 2000  # rate 1/2: 5 sigma is +-0.056


def _draws(fn, num=NUM_DRAWS) -> np.ndarray:
  """fn(seed) for `num` different seeds, stacked (run through tf.data: fast)."""
  seeds = tf.data.Dataset.range(num).map(lambda i: tf.stack([tf.constant(7, tf.int64), i]))
  return next(seeds.map(fn).batch(num).as_numpy_iterator())


def _coordinate_image(height=32, width=32) -> tf.Tensor:
  """Channel 0 = row + 1, channel 1 = column + 1, channel 2 = 1: every pixel is identifiable."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return tf.constant(np.stack([rows + 1, cols + 1, np.ones_like(rows)], -1), tf.float32)


def test_flip_mirrors_half_the_images():
  image = _coordinate_image()
  out = _draws(lambda seed: augment.random_flip(image, seed))
  flipped = np.all(out == image.numpy()[:, ::-1], axis=(1, 2, 3))
  unchanged = np.all(out == image.numpy(), axis=(1, 2, 3))
  assert np.all(flipped ^ unchanged)
  assert abs(flipped.mean() - 0.5) < 0.056


def test_cutout_rate_fill_and_square_geometry():
  fill = (0.25, 0.5, 0.75)
  image = tf.ones([32, 32, 3])
  out = _draws(lambda seed: augment.cutout(image, seed, size=16, fill=fill, probability=0.5))
  changed = np.any(out != 1.0, axis=-1)
  applied = changed.any(axis=(1, 2))
  assert abs(applied.mean() - 0.5) < 0.056
  np.testing.assert_array_equal(out[changed], np.broadcast_to(fill, out[changed].shape))
  centres = []
  for mask in changed[applied]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    # The filled area is the square clipped to the image: a full rectangle, 16 long unless clipped.
    assert mask.sum() == len(rows) * len(cols)
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    for idx in (rows, cols):
      assert len(idx) == 16 or idx[0] == 0 or idx[-1] == 31
    centre_row = rows[0] + 8 if rows[0] > 0 else rows[-1] + 1 - 8
    centres.append(centre_row)
  # Centres uniform over all 32 rows, so squares overhang the border about half the time.
  assert set(centres) == set(range(32))


def test_pad_and_crop_offsets_within_padding_and_all_81_reachable():
  image = _coordinate_image()
  out = _draws(lambda seed: augment.pad_and_random_crop(image, seed, padding=4))
  assert out.shape == (NUM_DRAWS, 32, 32, 3)
  offsets = set()
  for crop in out:
    # Output pixel (16, 16) is image pixel (12 + dy, 12 + dx), dy, dx in 0..8.
    dy, dx = int(crop[16, 16, 0]) - 13, int(crop[16, 16, 1]) - 13
    assert 0 <= dy <= 8 and 0 <= dx <= 8
    padded = np.pad(image.numpy(), [(4, 4), (4, 4), (0, 0)])
    np.testing.assert_array_equal(crop, padded[dy:dy + 32, dx:dx + 32])
    offsets.add((dy, dx))
  assert len(offsets) == 81


def test_normalize_per_channel():
  image = tf.constant([[[0.5, 0.25, 1.0]]])
  out = augment.normalize(image, (0.5, 0.0, 0.5), (1.0, 0.5, 0.25)).numpy()
  np.testing.assert_allclose(out, [[[0.0, 0.5, 2.0]]])


def test_cifar_train_preprocess_fills_cutout_with_the_mean():
  """After normalisation the Cutout square is exactly 0, in about half the images."""
  image = tf.constant(np.random.default_rng(0).integers(0, 256, [32, 32, 3]), tf.uint8)
  out = _draws(lambda seed: cifar.train_preprocess(image, seed, name="cifar100"), num=1000)
  zero_pixels = np.all(out == 0.0, axis=-1)
  assert abs(zero_pixels.any(axis=(1, 2)).mean() - 0.5) < 0.08
  # The zero padding (pixel value 0) normalises to -mean/std.
  padding_value = -np.array(cifar.MEAN["cifar100"], np.float32) / np.array(cifar.STD["cifar100"])
  assert np.any(np.all(np.isclose(out, padding_value), axis=-1))


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (300, 300)])
def test_inception_crop_window_area_and_aspect_within_bounds(shape):
  image_shape = tf.constant([*shape, 3], tf.int32)
  windows = _draws(lambda seed: augment.inception_crop_window(image_shape, seed), num=1000)
  top, left, height, width = windows.T
  assert np.all((top >= 0) & (left >= 0))
  assert np.all((top + height <= shape[0]) & (left + width <= shape[1]))
  area = height * width / (shape[0] * shape[1])
  whole = (height == shape[0]) & (width == shape[1])  # the documented fallback
  assert whole.mean() < 0.05
  crops = ~whole
  assert np.all((area[crops] >= 0.08 - 0.01) & (area[crops] <= 1.0))
  # Aspect (width / height) within 3/4..4/3 up to rounding of one pixel.
  assert np.all((width[crops] + 1) / height[crops] >= 3 / 4)
  assert np.all(width[crops] / (height[crops] + 1) <= 4 / 3)
  assert area[crops].min() < 0.15 and area[crops].max() > 0.85  # the whole range is used


def _jpeg(height, width, seed=0) -> tf.Tensor:
  image = np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)
  return tf.io.encode_jpeg(tf.constant(image), quality=95)


def test_decode_and_inception_crop_output():
  jpeg = _jpeg(120, 90)
  out = _draws(lambda seed: augment.decode_and_inception_crop(jpeg, seed, image_size=48), num=50)
  assert out.shape == (50, 48, 48, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert len({o.tobytes() for o in out}) == 50  # different crops


@pytest.mark.parametrize("shape, window", [
    ((375, 500), [24, 86, 328, 328]),  # side = int(0.875 * 375) = 328
    ((500, 375), [86, 24, 328, 328]),
    ((256, 256), [16, 16, 224, 224]),
])
def test_centre_crop_window(shape, window):
  got = augment.centre_crop_window(tf.constant([*shape, 3]), crop_fraction=0.875)
  np.testing.assert_array_equal(got.numpy(), window)


def test_decode_and_centre_crop_equals_decode_then_crop():
  # Smooth content: the fused decoder upsamples chroma at the window edge slightly
  # differently, which only noise-like images would turn into visible differences.
  rows, cols = np.meshgrid(np.linspace(0, 1, 150), np.linspace(0, 1, 200), indexing="ij")
  smooth = np.stack([rows, cols, (rows + cols) / 2], -1) * 255
  jpeg = tf.io.encode_jpeg(tf.constant(smooth.astype(np.uint8)), quality=95)
  got = augment.decode_and_centre_crop(jpeg, image_size=64).numpy()
  full = tf.image.decode_jpeg(jpeg, channels=3)
  top, left, side, _ = augment.centre_crop_window(tf.shape(full)).numpy()
  assert (top, left, side) == (10, 35, 131)
  crop = full[top:top + side, left:left + side]
  want = tf.image.resize(crop, [64, 64], method="bicubic", antialias=True) / 255.0
  np.testing.assert_allclose(got, np.clip(want.numpy(), 0, 1), atol=2 / 255)
  assert got.shape == (64, 64, 3)
