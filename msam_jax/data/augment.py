"""Image augmentations as pure TensorFlow functions.

The CIFAR batch augmentation takes its random parameters as arguments, one per
image, so it is vectorised over the batch and deterministic; the dataset module
draws the parameters. The JPEG crops work on one image and draw their window
from a stateless `seed` (int tensor of shape [2]). Either way the pipelines key
the randomness by (run seed, global position of the example), so resumed and
multi-process runs see exactly the images of an uninterrupted single process.

Images stay uint8 until `normalize`, which maps them to float32 once.
"""

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def _per_pixel(values, shape: tf.TensorShape, dtype) -> tf.Tensor:
  """Per-channel constants spread over [H, W, C].

  TensorFlow's CPU kernels broadcast a [C] vector over the innermost axis
  several times slower than a [H, W, C] one over the batch axis.
  """
  values = np.asarray(values, dtype.as_numpy_dtype)
  if not shape[-3:].is_fully_defined():
    return tf.constant(values, dtype)
  return tf.constant(np.broadcast_to(values, shape[-3:]), dtype)


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float], *, max_value: float = 255.0) -> tf.Tensor:
  """(images / max_value - mean) / std per channel, as float32; images of any dtype in [0, max_value]."""
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  scale = _per_pixel(1.0 / (max_value * std), images.shape, tf.float32)
  shift = _per_pixel(-mean / std, images.shape, tf.float32)
  return tf.cast(images, tf.float32) * scale + shift


def flip_cutout_pad_crop(
  images: tf.Tensor, params: dict[str, tf.Tensor], *, cutout_size: int, fill: Sequence[int], padding: int
) -> tf.Tensor:
  """The CIFAR augmentation of a batch [B, H, W, C] in one gather, in the original's order.

  1. flip: mirror images[i] left-right where params["flip"][i];
  2. Cutout (DeVries & Taylor 2017, arXiv 1708.04552): where
     params["cutout_apply"][i], fill (per channel) the `cutout_size` square
     spanning rows [row - size//2, row - size//2 + size) and likewise columns,
     (row, col) = params["cutout_centre"][i], clipped to the image;
  3. zero-pad by `padding` per side, crop H x W at params["crop_offset"][i] =
     (row, col) of the window in the padded image, each in [0, 2 padding].

  Every output pixel is one source pixel, `fill` or 0, so the three steps are
  one index map: a quarter of the memory traffic of doing them in turn, and
  exact in uint8.
  """
  height, width = images.shape[1], images.shape[2]
  offsets, centres = params["crop_offset"], params["cutout_centre"]
  rows = offsets[:, :1] + tf.range(height)[None, :] - padding  # [B, H] rows of the flipped image
  cols = offsets[:, 1:] + tf.range(width)[None, :] - padding  # [B, W] columns of the flipped image
  top, left = centres[:, :1] - cutout_size // 2, centres[:, 1:] - cutout_size // 2
  in_square = (
    ((rows >= top) & (rows < top + cutout_size))[:, :, None]
    & ((cols >= left) & (cols < left + cutout_size))[:, None, :]
    & params["cutout_apply"][:, None, None]
  )
  in_image = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
  source_cols = tf.where(params["flip"][:, None], width - 1 - cols, cols)
  out = tf.gather(images, tf.clip_by_value(rows, 0, height - 1), axis=1, batch_dims=1)
  out = tf.gather(out, tf.clip_by_value(source_cols, 0, width - 1), axis=2, batch_dims=1)
  keep = tf.cast(in_image & ~in_square, images.dtype)[..., None]
  filled = tf.cast(in_image & in_square, images.dtype)[..., None]
  return out * keep + tf.constant(fill, images.dtype) * filled


def random_resized_crop_window(
  image_shape: tf.Tensor,
  seed,
  *,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
  max_attempts: int = 10,
) -> tf.Tensor:
  """Crop window [top, left, height, width] of torchvision's `RandomResizedCrop` (Szegedy et al. 2015).

  torchvision's `RandomResizedCrop.get_params`, drawn from the stateless
  `seed`; see `resized_crop_window_from_uniforms` for the rule.
  """
  keys = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  uniforms = [tf.random.stateless_uniform([max_attempts], key, dtype=tf.float64) for key in keys]
  return resized_crop_window_from_uniforms(image_shape, *uniforms, scale=scale, ratio=ratio)


def resized_crop_window_from_uniforms(
  image_shape: tf.Tensor,
  u_area,
  u_log_ratio,
  u_top,
  u_left,
  *,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
  """torchvision's `RandomResizedCrop.get_params` given its uniforms in [0, 1) (float64 [attempts]).

  For each attempt k: area = U(scale) * H * W, log(r) = U(log ratio),
  w = round(sqrt(area * r)), h = round(sqrt(area / r)) (round half to even,
  like Python's); the first attempt with 0 < w <= W and 0 < h <= H gives the
  window, its offsets uniform integers top in [0, H - h], left in [0, W - w].
  If none fits: a centred crop of the whole image, its aspect ratio clamped to
  `ratio` (h = H, w = round(H * max ratio) for too-wide images, w = W,
  h = round(W / min ratio) for too-tall ones).
  """
  height = tf.cast(image_shape[0], tf.float64)
  width = tf.cast(image_shape[1], tf.float64)
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_low + (log_high - log_low) * u_log_ratio)
  w = tf.round(tf.sqrt(area * aspect))
  h = tf.round(tf.sqrt(area / aspect))
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32))  # the first attempt that fits (0 when none does)
  h, w = h[first], w[first]
  top = tf.minimum(tf.floor(u_top[first] * (height - h + 1)), height - h)
  left = tf.minimum(tf.floor(u_left[first] * (width - w + 1)), width - w)
  found = tf.stack([top, left, h, w])

  in_ratio = width / height
  fb_w = tf.where(in_ratio > ratio[1], tf.round(height * ratio[1]), width)
  fb_h = tf.where(in_ratio < ratio[0], tf.round(width / ratio[0]), height)
  fallback = tf.stack([tf.floor((height - fb_h) / 2), tf.floor((width - fb_w) / 2), fb_h, fb_w])
  return tf.cast(tf.where(tf.reduce_any(fits), found, fallback), tf.int32)


def centre_crop_window(image_shape: tf.Tensor, *, crop_fraction: float = 0.875) -> tf.Tensor:
  """Centred square window [top, left, side, side], side = crop_fraction * shorter side."""
  height, width = image_shape[0], image_shape[1]
  side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _decode_crop_resize(jpeg: tf.Tensor, window: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
  # Fused: only the JPEG blocks that overlap the window are decoded. Rounded back
  # to uint8 like torchvision's PIL resize.
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = tf.image.resize(image, [image_size, image_size], method=method, antialias=True)
  return tf.saturate_cast(tf.round(image), tf.uint8)  # bicubic overshoots a little


def decode_and_random_resized_crop(jpeg: tf.Tensor, seed, *, image_size: int) -> tf.Tensor:
  """torchvision's RandomResizedCrop of a JPEG, resized (bilinear) to uint8 [image_size, image_size, 3]."""
  window = random_resized_crop_window(tf.image.extract_jpeg_shape(jpeg), seed)
  return _decode_crop_resize(jpeg, window, image_size, "bilinear")


def decode_and_centre_crop(jpeg: tf.Tensor, *, image_size: int, crop_fraction: float = 0.875) -> tf.Tensor:
  """Centre crop of `crop_fraction` of the shorter side, resized (bicubic) to uint8 [image_size, image_size, 3]."""
  window = centre_crop_window(tf.image.extract_jpeg_shape(jpeg), crop_fraction=crop_fraction)
  return _decode_crop_resize(jpeg, window, image_size, "bicubic")
