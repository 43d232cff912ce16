"""CIFAR-10 / CIFAR-100 from TFDS, held in memory, with the original's augmentation.

Train: random horizontal flip; Cutout (probability 1/2, 16x16, filled with the
dataset mean); zero-pad by 4 and random 32x32 crop; normalise with the
original per-channel mean/std. Test: normalise only.
"""
import numpy as np
import tensorflow as tf

from msam_jax.data import augment
from msam_jax.data.datasets import tfds_split

MEAN = {
    "cifar10": (0.4914, 0.4822, 0.4465),
    "cifar100": (0.5071, 0.4865, 0.4409),
}
STD = {
    "cifar10": (0.2470, 0.2435, 0.2616),
    "cifar100": (0.2673, 0.2564, 0.2762),
}
IMAGE_SIZE = 32
CUTOUT_SIZE = 16
CUTOUT_PROBABILITY = 0.5
CROP_PADDING = 4

_READ_BATCH = 10_000


def load_split(name: str, split: str, *, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [n, 32, 32, 3], labels int32 [n]) of a TFDS CIFAR split, in file order."""
  ds = tfds_split(name, split, data_dir=data_dir, shuffle_files=False)
  images, labels = [], []
  for batch in ds.batch(_READ_BATCH).as_numpy_iterator():
    images.append(batch["image"])
    labels.append(batch["label"].astype(np.int32))
  return np.concatenate(images), np.concatenate(labels)


def sample_augmentation(key: tf.Tensor, batch_size: int) -> dict[str, tf.Tensor]:
  """Random parameters of `batch_size` train images from the stateless `key` (shape [2])."""
  flip_key, apply_key, centre_key, offset_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 4))
  return {
      "flip": tf.random.stateless_uniform([batch_size], flip_key) < 0.5,
      "cutout_apply": tf.random.stateless_uniform([batch_size], apply_key) < CUTOUT_PROBABILITY,
      # Centre uniform over all pixels: the square may overhang the border.
      "cutout_centre": tf.random.stateless_uniform([batch_size, 2], centre_key, 0, IMAGE_SIZE,
                                                   tf.int32),
      "crop_offset": tf.random.stateless_uniform([batch_size, 2], offset_key, 0,
                                                 2 * CROP_PADDING + 1, tf.int32),
  }


def train_preprocess(images: tf.Tensor, augmentation: dict[str, tf.Tensor], *,
                     name: str) -> tf.Tensor:
  """uint8 [B, 32, 32, 3] -> augmented, normalised float32 (the original's order)."""
  images = tf.cast(images, tf.float32) / 255.0
  images = augment.flip_left_right(images, augmentation["flip"])
  images = augment.cutout(images, augmentation["cutout_centre"], augmentation["cutout_apply"],
                          size=CUTOUT_SIZE, fill=MEAN[name])
  images = augment.pad_and_crop(images, augmentation["crop_offset"], padding=CROP_PADDING)
  return augment.normalize(images, MEAN[name], STD[name])


def eval_preprocess(images: tf.Tensor, *, name: str) -> tf.Tensor:
  """uint8 [B, 32, 32, 3] -> normalised float32."""
  return augment.normalize(tf.cast(images, tf.float32) / 255.0, MEAN[name], STD[name])
