"""Each augmentation's statistics against its definition."""
import numpy as np
import pytest
import tensorflow as tf

from msam_jax.data import augment, cifar

NUM_DRAWS = 2000  # a rate of 1/2 within +-0.056 is 5 sigma


def _draws(fn, num=NUM_DRAWS) -> np.ndarray:
  """fn(seed) for `num` different seeds, stacked (run through tf.data: fast)."""
  seeds = tf.data.Dataset.range(num).map(lambda i: tf.stack([tf.constant(7, tf.int64), i]))
  return next(seeds.map(fn).batch(num).as_numpy_iterator())


def _coordinate_images(batch, height=32, width=32) -> np.ndarray:
  """Channel 0 = row + 1, channel 1 = column + 1, channel 2 = 1: every pixel is identifiable."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  image = np.stack([rows + 1, cols + 1, np.ones_like(rows)], -1).astype(np.float32)
  return np.broadcast_to(image, (batch, height, width, 3))


@pytest.fixture(scope="module")
def cifar_draws():
  """The CIFAR augmentation parameters of NUM_DRAWS images."""
  key = tf.constant([3, 4], tf.int64)
  return {k: v.numpy() for k, v in cifar.sample_augmentation(key, NUM_DRAWS).items()}


def test_flip_rate_and_flip(cifar_draws):
  flip = cifar_draws["flip"]
  assert abs(flip.mean() - 0.5) < 0.056
  images = _coordinate_images(len(flip))
  out = augment.flip_left_right(tf.constant(images), tf.constant(flip)).numpy()
  np.testing.assert_array_equal(out[flip], images[flip][:, :, ::-1])
  np.testing.assert_array_equal(out[~flip], images[~flip])


def test_cutout_rate_centres_and_fill(cifar_draws):
  apply, centres = cifar_draws["cutout_apply"], cifar_draws["cutout_centre"]
  assert abs(apply.mean() - 0.5) < 0.056
  # Centres uniform over all pixels (so squares may overhang the border).
  assert centres.min() == 0 and centres.max() == 31
  assert set(centres[:, 0]) == set(range(32)) and set(centres[:, 1]) == set(range(32))

  fill = (0.25, 0.5, 0.75)
  images = np.ones([len(apply), 32, 32, 3], np.float32)
  out = augment.cutout(tf.constant(images), tf.constant(centres), tf.constant(apply),
                       size=16, fill=fill).numpy()
  for image, (row, col), applied in zip(out, centres, apply):
    want = np.ones([32, 32, 3], np.float32)
    if applied:  # The definition: rows row-8 .. row+7, clipped to the image, likewise columns.
      want[max(row - 8, 0):row + 8, max(col - 8, 0):col + 8] = fill
    np.testing.assert_array_equal(image, want)
  clipped = apply & np.any((centres < 8) | (centres > 24), axis=1)
  assert clipped.any()  # some squares overhang the border


def test_crop_offsets_within_padding_all_81_reachable_and_crop(cifar_draws):
  offsets = cifar_draws["crop_offset"]
  assert offsets.min() == 0 and offsets.max() == 8
  assert len({tuple(o) for o in offsets}) == 81
  images = _coordinate_images(len(offsets))
  out = augment.pad_and_crop(tf.constant(images), tf.constant(offsets), padding=4).numpy()
  padded = np.pad(images[0], [(4, 4), (4, 4), (0, 0)])
  for crop, (dy, dx) in zip(out, offsets):
    np.testing.assert_array_equal(crop, padded[dy:dy + 32, dx:dx + 32])


def test_normalize_per_channel():
  image = tf.constant([[[0.5, 0.25, 1.0]]])
  out = augment.normalize(image, (0.5, 0.0, 0.5), (1.0, 0.5, 0.25)).numpy()
  np.testing.assert_allclose(out, [[[0.0, 0.5, 2.0]]])


def test_cifar_train_preprocess_in_the_original_order():
  """flip -> Cutout (mean) -> pad + crop -> normalise: checked on one image per case."""
  name = "cifar100"
  mean, std = np.array(cifar.MEAN[name], np.float32), np.array(cifar.STD[name], np.float32)
  image = np.random.default_rng(0).integers(0, 256, [32, 32, 3]).astype(np.uint8)
  augmentation = {"flip": [True], "cutout_apply": [True], "cutout_centre": [[2, 30]],
                  "crop_offset": [[0, 8]]}
  out = cifar.train_preprocess(tf.constant(image[None]), {k: tf.constant(v) for k, v in
                                                         augmentation.items()}, name=name)
  want = image[:, ::-1] / np.float32(255.0)
  want[0:10, 22:32] = mean  # Cutout at (2, 30) of the flipped image, clipped
  want = np.pad(want, [(4, 4), (4, 4), (0, 0)])[0:32, 8:40]  # shift down 4, left 4
  np.testing.assert_allclose(out.numpy()[0], (want - mean) / std, rtol=1e-6, atol=1e-6)
  assert np.all(out.numpy()[0, 4:14, 18:28] == 0.0)  # the Cutout square: exactly the mean


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
