"""ImageNet-1k (TFDS `imagenet2012`), streamed as encoded JPEGs and decoded fused with the crop.

Train: torchvision's RandomResizedCrop (area 0.08-1, aspect 3/4-4/3 drawn
log-uniformly, centre-crop fallback) resized (bilinear) to `image_size`,
random horizontal flip, as the original. Eval: centre crop of 0.875 of the
shorter side resized (bicubic) to `image_size`. Both normalised with the
usual ImageNet mean/std. The test split is TFDS's 'validation'.
"""

import tensorflow as tf
import tensorflow_datasets as tfds

from msam_jax.data import augment
from msam_jax.data.datasets import tfds_split

NAME = "imagenet2012"
TRAIN_SPLIT = "train"
TEST_SPLIT = "validation"
NUM_CLASSES = 1000
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875


def read(split, *, data_dir: str | None, shuffle_seed: int | None = None) -> tf.data.Dataset:
  """Examples {'image': JPEG bytes, 'label': int64} of `split`, not decoded.

  With `shuffle_seed`, the file order is shuffled deterministically by it;
  without, files are read in order.
  """
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
  return tfds_split(
    NAME,
    split,
    data_dir=data_dir,
    shuffle_files=shuffle_seed is not None,
    decoders={"image": tfds.decode.SkipDecoding()},
    read_config=read_config,
  )


def split_size(split, *, data_dir: str | None) -> int:
  """Example count of `split` (a sub-split too), from the metadata.

  Where the metadata does not know it (a mocked or hand-made dataset) the
  records are counted, without decoding: the canonical counts would be wrong
  there, and evaluation would pad tens of thousands of batches.
  """
  splits = tfds.builder(NAME, data_dir=data_dir).info.splits
  try:
    known = splits[split].num_examples
  except (KeyError, ValueError, TypeError):
    known = 0
  return known or int(read(split, data_dir=data_dir).reduce(0, lambda n, _: n + 1))


def split_sizes(data_dir: str | None) -> tuple[int, int]:
  """(train, test) example counts of the prepared dataset (see `split_size`)."""
  return split_size(TRAIN_SPLIT, data_dir=data_dir), split_size(TEST_SPLIT, data_dir=data_dir)


def train_preprocess(jpeg: tf.Tensor, seed, *, image_size: int) -> tf.Tensor:
  """JPEG bytes -> random-resized crop, flip, normalise: float32 [size, size, 3]."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = augment.decode_and_random_resized_crop(jpeg, crop_seed, image_size=image_size)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return augment.normalize(image, MEAN, STD)


def eval_crop(jpeg: tf.Tensor, *, image_size: int) -> tf.Tensor:
  """JPEG bytes -> centre crop resized: uint8 [size, size, 3] (what the eval cache holds)."""
  return augment.decode_and_centre_crop(jpeg, image_size=image_size, crop_fraction=EVAL_CROP_FRACTION)


def eval_preprocess(jpeg: tf.Tensor, *, image_size: int) -> tf.Tensor:
  """JPEG bytes -> centre crop, normalise: float32 [size, size, 3]."""
  return augment.normalize(eval_crop(jpeg, image_size=image_size), MEAN, STD)
