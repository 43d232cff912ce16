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


def train_preprocess(image: tf.Tensor, seed, *, name: str) -> tf.Tensor:
  """uint8 [32, 32, 3] -> augmented, normalised float32 (order as in the original)."""
  flip_seed, cutout_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  image = tf.cast(image, tf.float32) / 255.0
  image = augment.random_flip(image, flip_seed)
  image = augment.cutout(image, cutout_seed, size=CUTOUT_SIZE, fill=MEAN[name],
                         probability=CUTOUT_PROBABILITY)
  image = augment.pad_and_random_crop(image, crop_seed, padding=CROP_PADDING)
  return augment.normalize(image, MEAN[name], STD[name])


def eval_preprocess(image: tf.Tensor, *, name: str) -> tf.Tensor:
  """uint8 [32, 32, 3] -> normalised float32."""
  return augment.normalize(tf.cast(image, tf.float32) / 255.0, MEAN[name], STD[name])
