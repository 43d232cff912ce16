"""Image augmentations as pure TensorFlow functions of one image.

Every random function takes a stateless `seed` (int32/int64 tensor of shape
[2]), so the same seed gives the same output: the pipelines derive the seed
from (run seed, global position of the example), which makes resumed and
multi-process runs see exactly the images an uninterrupted single process sees.

Pixel values are float32 in [0, 1] unless a function says otherwise; the JPEG
functions decode straight to that range.
"""
from collections.abc import Sequence

import tensorflow as tf


def _split(seed, num: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform_int(seed, maxval) -> tf.Tensor:
  """One integer uniform in [0, maxval)."""
  return tf.random.stateless_uniform([], seed, minval=0, maxval=maxval, dtype=tf.int32)


def random_flip(image: tf.Tensor, seed) -> tf.Tensor:
  """Mirrors left-right with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def cutout(image: tf.Tensor, seed, *, size: int, fill: Sequence[float],
           probability: float = 0.5) -> tf.Tensor:
  """Cutout (DeVries & Taylor 2017, arXiv 1708.04552) applied with `probability`.

  A `size` x `size` square filled with `fill` (per channel). Its centre is
  uniform over all pixels, so near the border part of the square falls outside
  the image and only the inside part is filled.
  """
  apply_seed, row_seed, col_seed = _split(seed, 3)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  top = _uniform_int(row_seed, height) - size // 2
  left = _uniform_int(col_seed, width) - size // 2
  rows = tf.range(height)
  cols = tf.range(width)
  in_rows = (rows >= top) & (rows < top + size)
  in_cols = (cols >= left) & (cols < left + size)
  square = in_rows[:, None, None] & in_cols[None, :, None]
  apply = tf.random.stateless_uniform([], apply_seed) < probability
  fill = tf.constant(fill, image.dtype)
  return tf.where(apply & square, fill, image)


def pad_and_random_crop(image: tf.Tensor, seed, *, padding: int) -> tf.Tensor:
  """Zero-pads each side by `padding`, then crops a window of the original size.

  Both offsets are uniform over the (2 padding + 1) positions, so the image is
  shifted by up to `padding` pixels in each direction.
  """
  row_seed, col_seed = _split(seed, 2)
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  top = _uniform_int(row_seed, 2 * padding + 1)
  left = _uniform_int(col_seed, 2 * padding + 1)
  cropped = tf.slice(padded, [top, left, 0], tf.shape(image))
  return tf.ensure_shape(cropped, image.shape)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """(image - mean) / std per channel."""
  return (image - tf.constant(mean, image.dtype)) / tf.constant(std, image.dtype)


def inception_crop_window(image_shape: tf.Tensor, seed, *,
                          area_range: tuple[float, float] = (0.08, 1.0),
                          aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
                          max_attempts: int = 10) -> tf.Tensor:
  """Random crop window [top, left, height, width] of the Inception crop.

  Area fraction uniform-ish in `area_range`, width/height in
  `aspect_ratio_range` (Szegedy et al. 2015, torchvision's RandomResizedCrop).
  When no window fits in `max_attempts` tries, the whole image.
  """
  whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=whole_image, seed=seed, min_object_covered=0.0,
      aspect_ratio_range=aspect_ratio_range, area_range=area_range,
      max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def centre_crop_window(image_shape: tf.Tensor, *, crop_fraction: float = 0.875) -> tf.Tensor:
  """Centred square window [top, left, side, side], side = crop_fraction * shorter side."""
  height, width = image_shape[0], image_shape[1]
  side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _decode_crop_resize(jpeg: tf.Tensor, window: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
  # Fused: only the JPEG blocks that overlap the window are decoded.
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = tf.image.resize(image, [image_size, image_size], method=method, antialias=True)
  return tf.clip_by_value(image / 255.0, 0.0, 1.0)  # bicubic overshoots a little


def decode_and_inception_crop(jpeg: tf.Tensor, seed, *, image_size: int) -> tf.Tensor:
  """Inception random-resized crop of a JPEG, resized (bilinear) to image_size^2."""
  window = inception_crop_window(tf.image.extract_jpeg_shape(jpeg), seed)
  return _decode_crop_resize(jpeg, window, image_size, "bilinear")


def decode_and_centre_crop(jpeg: tf.Tensor, *, image_size: int, crop_fraction: float = 0.875) -> tf.Tensor:
  """Centre crop of `crop_fraction` of the shorter side, resized (bicubic) to image_size^2."""
  window = centre_crop_window(tf.image.extract_jpeg_shape(jpeg), crop_fraction=crop_fraction)
  return _decode_crop_resize(jpeg, window, image_size, "bicubic")
