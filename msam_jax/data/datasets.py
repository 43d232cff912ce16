"""Which datasets exist, what they look like, and how a missing one is reported.

The facts here (classes, image shape, split sizes) are constants, so configs,
models and schedules can ask for them without touching the data.
"""

import dataclasses
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from msam_jax import validation
from msam_jax.data import synthetic as synthetic_data
from msam_jax.data import validation_split


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset as the model sees it (after preprocessing)."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # (height, width, channels)
  num_train: int  # the examples that train (a validation subset is not among them)
  num_test: int
  num_validation: int = 0  # carved from the training split (validation_split.py)


DATASETS = ("digits", "cifar10", "cifar100", "imagenet2012", "synthetic")  # the names config.dataset accepts
# Datasets held in memory: their training split can be evaluated as trained.
IN_MEMORY = ("digits", "cifar10", "cifar100")
# Datasets with a validation subset (`validation_fraction`): carved from the training split of
# those in memory, drawn from its own stream for synthetic.
WITH_VALIDATION = (*IN_MEMORY, "synthetic")

DEFAULT_IMAGENET_SIZE = 224

# The digits split sizes are those of `digits.py` (1797 scans, 360 held out).
_FIXED = {
  "digits": DatasetInfo("digits", 10, (8, 8, 1), 1437, 360),
  "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), 50_000, 10_000),
  "cifar100": DatasetInfo("cifar100", 100, (32, 32, 3), 50_000, 10_000),
}
_IMAGENET_COUNTS = dict(num_classes=1000, num_train=1_281_167, num_test=50_000)


class DatasetNotFoundError(ValueError):
  """The dataset is not prepared in the data_dir; the message says how to prepare it."""


def check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}.")


def dataset_info(
  name: str, *, image_size: int | None = None, synthetic=None, validation_fraction: float = 0.0
) -> DatasetInfo:
  """The `DatasetInfo` of `name`; `image_size` (square side) only for imagenet2012.

  `synthetic` (a `synthetic.Spec`, default `Spec()`) describes the synthetic dataset.
  `validation_fraction` (digits, CIFAR and synthetic) moves that share of the
  training split into `num_validation`.
  """
  check_name(name)
  validation_split.check(validation_fraction)
  if validation_fraction and name not in WITH_VALIDATION:
    raise ValueError(
      f"validation_fraction={validation_fraction!r} is available for {', '.join(WITH_VALIDATION)} only, not {name};"
      " set it to 0."
    )
  info = _dataset_info(name, image_size, synthetic)
  num_validation = validation_split.size(info.num_train, validation_fraction)
  return dataclasses.replace(info, num_train=info.num_train - num_validation, num_validation=num_validation)


def _dataset_info(name: str, image_size, synthetic) -> DatasetInfo:
  if name == "synthetic":
    spec = synthetic_data.Spec() if synthetic is None else synthetic
    return DatasetInfo(name, spec.num_classes, spec.image_shape, spec.num_train, spec.num_test)
  if name == "imagenet2012":
    size = DEFAULT_IMAGENET_SIZE if image_size is None else image_size
    validation.integer("image_size", size)
    return DatasetInfo(name, image_shape=(size, size, 3), **_IMAGENET_COUNTS)
  info = _FIXED[name]
  if image_size is not None and image_size != info.image_shape[0]:
    raise ValueError(
      f"image_size={image_size!r} is not available for {name}: its images are "
      f"{info.image_shape[0]}x{info.image_shape[1]}; only imagenet2012 is resized "
      "(leave image_size as None)."
    )
  return info


def steps_per_epoch(name_or_info: str | DatasetInfo, global_batch_size: int) -> int:
  """Training steps per epoch: full global batches only (the remainder is dropped)."""
  info = name_or_info if isinstance(name_or_info, DatasetInfo) else dataset_info(name_or_info)
  check_batch_size(global_batch_size)
  if global_batch_size > info.num_train:
    raise ValueError(
      f"global_batch_size={global_batch_size} exceeds the {info.num_train} training examples of {info.name}."
    )
  return info.num_train // global_batch_size


def check_batch_size(global_batch_size: Any) -> None:
  validation.integer("global_batch_size", global_batch_size)


def _preparation_hint(name: str, data_dir: str) -> str:
  if name == "imagenet2012":
    return (
      f"ImageNet needs a manual download: put ILSVRC2012_img_train.tar and "
      f"ILSVRC2012_img_val.tar into {data_dir}/downloads/manual/, then run "
      f"`tfds build imagenet2012 --data_dir {data_dir}` (hours; about 300 GB of disk)."
    )
  return f"Prepare it once (downloads it) with `tfds build {name} --data_dir {data_dir}`."


def tfds_reader_identity():
  """What reads TFDS datasets now: part of the key of every cache of TFDS data.

  `tfds.testing.mock_data` replaces `DatasetBuilder.as_dataset` for its
  context, so a cache keyed by it never hands one context's (or the real
  dataset's) examples to another.
  """
  return tfds.core.DatasetBuilder.as_dataset


def tfds_split(name: str, split: Any, *, data_dir: str | None, **as_dataset_kwargs) -> tf.data.Dataset:
  """`builder.as_dataset(split)` of a prepared TFDS dataset; never downloads.

  Raises:
    DatasetNotFoundError: `name` is not prepared in `data_dir` (TFDS's default
      data_dir, `~/tensorflow_datasets` or $TFDS_DATA_DIR, when None).
  """
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    return builder.as_dataset(split=split, **as_dataset_kwargs)
  except AssertionError:  # TFDS's way of saying "not prepared here".
    root = str(builder.data_dir_root)
    raise DatasetNotFoundError(
      f"Dataset {name!r} was not found in data_dir {root!r}. "
      f"{_preparation_hint(name, root)} Then pass that directory as data_dir "
      "(config.data_dir)."
    ) from None
