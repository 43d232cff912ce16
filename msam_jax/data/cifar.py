"""CIFAR-10 / CIFAR-100 from TFDS, held in memory, with the original's augmentation.

Train: random horizontal flip; Cutout (probability 1/2, 16x16); zero-pad by 4
and random 32x32 crop; normalise with the original per-channel mean/std. Test:
normalise only. The constants are the original's (MSAM `utility/data.py`,
computed there from the training images), at full precision.

Cutout fill: as the original, which fills the uint8 image with
`mean * 255` truncated to an integer (numpy's `fill` on a uint8 array) before
`ToTensor` and `Normalize`: CIFAR-100's square becomes (129, 124, 112) / 255,
i.e. about -0.005, -0.001, -0.006 after normalising, not exactly 0.
"""

import functools

import numpy as np
import tensorflow as tf

from msam_jax.data import augment
from msam_jax.data.datasets import tfds_reader_identity, tfds_split

MEAN = {
  "cifar10": (0.4913999140262604, 0.48215872049331665, 0.4465313255786896),
  "cifar100": (0.5070753693580627, 0.4865487813949585, 0.44091784954071045),
}
STD = {
  "cifar10": (0.24703197181224823, 0.243484228849411, 0.26158687472343445),
  "cifar100": (0.2673334777355194, 0.25643861293792725, 0.2761503756046295),
}
CUTOUT_FILL = {name: tuple(int(255 * m) for m in mean) for name, mean in MEAN.items()}
IMAGE_SIZE = 32
CUTOUT_SIZE = 16
CUTOUT_PROBABILITY = 0.5
CROP_PADDING = 4

_READ_BATCH = 10_000


def load_split(name: str, split: str, *, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [n, 32, 32, 3], labels int32 [n]) of a TFDS CIFAR split, in file order.

  Read once per process and kept (read-only arrays; about 180 MB for both
  splits): the loop's evaluations and extra iterators do not re-read TFDS.
  """
  return _load_split(name, split, data_dir, tfds_reader_identity())


@functools.lru_cache(maxsize=4)
def _load_split(name, split, data_dir, reader) -> tuple[np.ndarray, np.ndarray]:
  del reader  # part of the cache key only
  ds = tfds_split(name, split, data_dir=data_dir, shuffle_files=False)
  images, labels = [], []
  for batch in ds.batch(_READ_BATCH).as_numpy_iterator():
    images.append(batch["image"])
    labels.append(batch["label"].astype(np.int32))
  images, labels = np.concatenate(images), np.concatenate(labels)
  images.flags.writeable = labels.flags.writeable = False
  return images, labels


def sample_augmentation(key: tf.Tensor, batch_size: int) -> dict[str, tf.Tensor]:
  """Random parameters of `batch_size` train images from the stateless `key` (shape [2])."""
  flip_key, apply_key, centre_key, offset_key = tf.unstack(tf.random.experimental.stateless_split(key, 4))
  return {
    "flip": tf.random.stateless_uniform([batch_size], flip_key) < 0.5,
    "cutout_apply": tf.random.stateless_uniform([batch_size], apply_key) < CUTOUT_PROBABILITY,
    # Centre uniform over all pixels: the square may overhang the border.
    "cutout_centre": tf.random.stateless_uniform([batch_size, 2], centre_key, 0, IMAGE_SIZE, tf.int32),
    "crop_offset": tf.random.stateless_uniform([batch_size, 2], offset_key, 0, 2 * CROP_PADDING + 1, tf.int32),
  }


def train_preprocess(images: tf.Tensor, augmentation: dict[str, tf.Tensor], *, name: str) -> tf.Tensor:
  """uint8 [B, 32, 32, 3] -> augmented (the original's order), normalised float32."""
  images = augment.flip_cutout_pad_crop(
    images, augmentation, cutout_size=CUTOUT_SIZE, fill=CUTOUT_FILL[name], padding=CROP_PADDING
  )
  return augment.normalize(images, MEAN[name], STD[name])


def eval_preprocess(images: tf.Tensor, *, name: str) -> tf.Tensor:
  """uint8 [B, 32, 32, 3] -> normalised float32."""
  return augment.normalize(images, MEAN[name], STD[name])
