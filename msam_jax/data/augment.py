"""Image augmentations as pure TensorFlow functions.

The batch operations (flip, Cutout, pad-and-crop) take their random
parameters as arguments, one per image, so they are vectorised over the batch
and deterministic; each dataset module draws the parameters. The JPEG crops
work on one image and draw their window from a stateless `seed` (int tensor
of shape [2]). Either way the pipelines key the randomness by (run seed,
global position of the example), so resumed and multi-process runs see
exactly the images of an uninterrupted single process.

Pixel values are float32 in [0, 1]; the JPEG functions decode to that range.
"""
from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def _per_pixel(values: Sequence[float], images: tf.Tensor) -> tf.Tensor:
  """Per-channel constants spread over [H, W, C].

  TensorFlow's CPU kernels broadcast a [C] vector over the innermost axis
  several times slower than a [H, W, C] one over the batch axis.
  """
  shape = images.shape[-3:]
  if not shape.is_fully_defined():
    return tf.constant(values, images.dtype)
  return tf.constant(np.broadcast_to(np.asarray(values, np.float32), shape), images.dtype)


def flip_left_right(images: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
  """Mirrors images[i] (batch [B, H, W, C]) left-right where flip[i] (bool [B])."""
  return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def cutout(images: tf.Tensor, centres: tf.Tensor, apply: tf.Tensor, *, size: int,
           fill: Sequence[float]) -> tf.Tensor:
  """Cutout (DeVries & Taylor 2017, arXiv 1708.04552) of a batch [B, H, W, C].

  Where apply[i], a `size` x `size` square centred on pixel centres[i] = (row,
  col) is filled with `fill` (per channel); the part of the square that
  overhangs the border is dropped. The square spans rows
  [row - size//2, row - size//2 + size), likewise columns.
  """
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  top = centres[:, :1] - size // 2  # [B, 1]
  left = centres[:, 1:] - size // 2
  rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
  in_rows = (rows >= top) & (rows < top + size)  # [B, H]
  in_cols = (cols >= left) & (cols < left + size)  # [B, W]
  square = in_rows[:, :, None, None] & in_cols[:, None, :, None] & apply[:, None, None, None]
  return tf.where(square, _per_pixel(fill, images), images)


def pad_and_crop(images: tf.Tensor, offsets: tf.Tensor, *, padding: int) -> tf.Tensor:
  """Zero-pads a batch [B, H, W, C] by `padding` per side, then crops H x W at offsets[i].

  offsets[i] = (row, col) of the window in the padded image, each in
  [0, 2 padding]: the content moves by (padding - offset) pixels.
  """
  height, width = images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
  rows = offsets[:, :1] + tf.range(height)[None, :]  # [B, H]
  cols = offsets[:, 1:] + tf.range(width)[None, :]  # [B, W]
  cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(cropped, cols, axis=2, batch_dims=1)


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """(images - mean) / std over the last (channel) axis."""
  return (images - _per_pixel(mean, images)) / _per_pixel(std, images)


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
