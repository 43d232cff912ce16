"""scikit-learn's handwritten digits: the embedded default dataset.

1797 real 8x8 scans (UCI optdigits test set, bundled with scikit-learn, so
no download) with pixel values 0..16. A fixed permutation (seed 0) holds
out 360 of them as the test split; the other 1437 train. Pixels are scaled
to [0, 1] and normalised by the train split's mean and standard deviation.
No augmentation.
"""

import functools

import numpy as np
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

from msam_jax import validation
from msam_jax.data import augment
from msam_jax.data.datasets import dataset_info

MAX_PIXEL = 16.0
_SPLIT_SEED = 0


@functools.cache
def _splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  digits = sklearn_datasets.load_digits()
  images = digits.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], 0..16
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
  num_test = dataset_info("digits").num_test
  test, train = order[:num_test], order[num_test:]
  return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [n, 8, 8, 1] in 0..16, labels int32 [n]) of 'train' or 'test'."""
  validation.one_of("split", split, ("train", "test"))
  images, labels = _splits()[split]
  return images.copy(), labels.copy()


@functools.cache
def normalization() -> tuple[float, float]:
  """(mean, std) of the train split's pixels after scaling to [0, 1]."""
  pixels = _splits()["train"][0] / MAX_PIXEL
  return float(pixels.mean()), float(pixels.std())


def preprocess(images: tf.Tensor) -> tf.Tensor:
  """uint8 [..., 8, 8, 1] in 0..16 -> normalised float32; the same for train and test."""
  mean, std = normalization()
  return augment.normalize(images, [mean], [std], max_value=MAX_PIXEL)
