"""Training and evaluation iterators: global batches, per-process shares, exact resume.

Training batches are a function of (seed, step) only:

* digits and CIFAR live in memory. Each epoch is a permutation of the train
  split keyed by (seed, epoch), cut into global batches of B (the remainder
  dropped); process `p` of `P` takes rows `p*B/P .. (p+1)*B/P - 1` of each.
  A global batch therefore does not depend on the number of processes, and
  `start_step` is index arithmetic.
* ImageNet streams from TFDS: each process reads its own part of the split
  (`tfds.split_for_jax_process`) in an order keyed by (seed, epoch);
  `start_step` skips the consumed records before anything is decoded. The
  order is a bounded approximation of a full permutation (TFRecords have no
  random access): a fresh permutation of the files (1024 for the train
  split), 16 of them read interleaved, then a shuffle buffer of
  IMAGENET_SHUFFLE_BUFFER encoded JPEGs (about 1.1 GB per process at
  ImageNet's mean of ~110 KB per JPEG).

Random augmentation is keyed by (seed, step) and drawn for the whole global
batch (in memory, vectorised), or by (seed, global position of the example)
(ImageNet, per image), so it too is identical after a restart and for any
number of processes.

Evaluation visits the test split once: global batch `b` holds examples
`b*B .. b*B+B-1` (in-memory) or each process reads its part (ImageNet);
the last batch is padded with zero images whose `mask` is False, and every
process yields the same number of batches. The test data is read once per
process: CIFAR and digits arrays stay in memory, and ImageNet's decoded,
cropped uint8 test images are cached in memory by the first evaluation
(image_size^2 * 3 bytes each: 7.5 GB for 50,000 at 224, divided among the
processes), so later evaluations skip reading and decoding.
"""

import functools
import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from msam_jax import validation
from msam_jax.data import augment, cifar, digits, imagenet, label_noise, validation_split
from msam_jax.data import synthetic as synthetic_data
from msam_jax.data.datasets import (
  DATASETS,
  IN_MEMORY,
  WITH_VALIDATION,
  check_batch_size,
  dataset_info,
  tfds_reader_identity,
)

Batch = dict[str, np.ndarray]

IMAGENET_SHUFFLE_BUFFER = 10_000  # encoded JPEGs, ~1.1 GB
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class Shard:
  """This process's share of every global batch: rows [index*local_batch, (index+1)*local_batch)."""

  index: int
  count: int
  global_batch: int

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.count

  @property
  def offset(self) -> int:
    return self.index * self.local_batch


def shard_for(
  global_batch_size: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  num_devices: int | None = None,
) -> Shard:
  """Validates the batch against the processes and devices (defaults: jax's)."""
  check_batch_size(global_batch_size)
  if process_index is None or process_count is None or num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    num_devices = jax.device_count() if num_devices is None else num_devices
  validation.integer("process_count", process_count)
  validation.integer("process_index", process_index, 0, process_count)
  validation.integer("num_devices", num_devices)
  for count, what in ((num_devices, "devices"), (process_count, "processes")):
    if global_batch_size % count:
      raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by the {count} {what}; use a multiple of {count}."
      )
  return Shard(process_index, process_count, global_batch_size)


def _check_seed(seed) -> None:
  validation.integer("seed", seed, 0, 2**63)


def _stream_key(seed: int, stream: int) -> tf.Tensor:
  """Independent stateless-RNG keys for the shuffle and the augmentation."""
  return tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), stream)


@dataclasses.dataclass(frozen=True)
class TrainingLabels:
  """How the training split is used: label noise (label_noise.py) and a validation subset (validation_split.py)."""

  label_noise: float = 0.0
  label_noise_seed: int = 0
  validation_fraction: float = 0.0

  def __post_init__(self):
    label_noise.check(self.label_noise, self.label_noise_seed)
    validation_split.check(self.validation_fraction)


SPLITS = ("test", "validation", "train")  # what `eval_iterator` can visit


def _load_in_memory(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
  if name == "digits":
    return digits.load_split(split)
  return cifar.load_split(name, split, data_dir=data_dir)


def in_memory_arrays(name: str, split: str, labels: TrainingLabels, data_dir=None) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of a digits or CIFAR split as the run uses it.

  "train": the examples that train, with their (noisy) training labels;
  "validation": the held-out examples, clean labels; "test": the test split.
  """
  return _in_memory_arrays(name, split, labels, data_dir, tfds_reader_identity())


@functools.lru_cache(maxsize=8)
def _in_memory_arrays(name, split, labels: TrainingLabels, data_dir, reader):
  del reader  # part of the cache key only
  if split == "test":
    return _load_in_memory(name, "test", data_dir)
  images, clean = _load_in_memory(name, "train", data_dir)
  train, held_out = validation_split.split(clean, labels.validation_fraction)
  if split == "validation":
    return images[held_out], clean[held_out]
  noisy = label_noise.corrupt(
    clean,
    np.arange(len(clean)),  # the identity: index in the stored training split
    num_classes=dataset_info(name).num_classes,
    rate=labels.label_noise,
    seed=labels.label_noise_seed,
  ).numpy()
  if not len(held_out):
    return images, noisy
  return images[train], noisy[train]


def realised_noise_fraction(
  name: str, labels: TrainingLabels, *, data_dir=None, synthetic=None, global_batch_size: int = 1
) -> float | None:
  """The fraction of training labels the noise changed; None for ImageNet (it would need a pass over the split).

  digits, CIFAR: over the examples that train. Synthetic: over its first
  epoch's stream positions (num_train // global_batch_size batches).
  """
  if name == "imagenet2012":
    return None
  if name == "synthetic":
    spec = synthetic or synthetic_data.Spec()
    num_train = spec.num_train - validation_split.size(spec.num_train, labels.validation_fraction)
    positions = np.arange(num_train // global_batch_size * global_batch_size)
    clean = np.zeros(len(positions), np.int32)  # the flip does not depend on the label
    noisy = label_noise.corrupt(
      clean, positions, num_classes=spec.num_classes, rate=labels.label_noise, seed=labels.label_noise_seed
    ).numpy()
    return float(np.mean(noisy != clean)) if len(positions) else 0.0
  noisy = in_memory_arrays(name, "train", labels, data_dir)[1]
  clean = in_memory_arrays(name, "train", TrainingLabels(validation_fraction=labels.validation_fraction), data_dir)[1]
  return float(np.mean(noisy != clean))


def _in_memory_split(name: str, split: str, labels: TrainingLabels, shard: Shard, data_dir):
  """(images, labels, preprocess(local batch, step key)) of a dataset held in host memory.

  `split` "train_batches" is the training split augmented; the others (SPLITS) are not.
  """
  augmented = split == "train_batches"
  images, split_labels = in_memory_arrays(name, "train" if augmented else split, labels, data_dir)
  if name == "digits":
    return images, split_labels, lambda batch, key: digits.preprocess(batch)
  if not augmented:
    return images, split_labels, lambda batch, key: cifar.eval_preprocess(batch, name=name)

  def train_preprocess(batch, key):
    # Drawn for the whole global batch, then this process's rows: a row's augmentation
    # does not depend on the number of processes.
    augmentation = cifar.sample_augmentation(key, shard.global_batch)
    rows = slice(shard.offset, shard.offset + shard.local_batch)
    return cifar.train_preprocess(batch, {k: v[rows] for k, v in augmentation.items()}, name=name)

  return images, split_labels, train_preprocess


def _epoch_batches(num_examples: int, shard: Shard, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
  """(example indices [local_batch], global step) of this process for each step of one epoch."""
  steps = num_examples // shard.global_batch
  order = tf.random.experimental.stateless_shuffle(
    tf.range(num_examples, dtype=tf.int64),
    seed=tf.random.experimental.stateless_fold_in(_stream_key(seed, _SHUFFLE_STREAM), epoch),
  )
  rows = tf.reshape(order[: steps * shard.global_batch], [steps, shard.global_batch])
  rows = rows[:, shard.offset : shard.offset + shard.local_batch]
  return tf.data.Dataset.from_tensor_slices((rows, epoch * steps + tf.range(steps, dtype=tf.int64)))


def _in_memory_train(
  name, shard: Shard, seed: int, start_step: int, data_dir, training_labels: TrainingLabels
) -> tf.data.Dataset:
  images, labels, preprocess = _in_memory_split(name, "train_batches", training_labels, shard, data_dir)
  steps = len(labels) // shard.global_batch
  if steps == 0:
    raise ValueError(f"global_batch_size={shard.global_batch} exceeds the {len(labels)} training examples of {name}.")
  first_epoch, first_step = divmod(start_step, steps)
  images, labels = tf.constant(images), tf.constant(labels)
  augment_key = _stream_key(seed, _AUGMENT_STREAM)

  def batch(indices, step):
    key = tf.random.experimental.stateless_fold_in(augment_key, step)
    return {"image": preprocess(tf.gather(images, indices), key), "label": tf.gather(labels, indices)}

  return (
    tf.data.Dataset.counter(first_epoch)
    .flat_map(lambda epoch: _epoch_batches(len(labels), shard, seed, epoch))
    .skip(first_step)  # indices only: cheap
    .map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  )


def _in_memory_eval(name, split: str, shard: Shard, data_dir, training_labels: TrainingLabels) -> tf.data.Dataset:
  images, labels, preprocess = _in_memory_split(name, split, training_labels, shard, data_dir)
  num_examples = len(labels)
  num_batches = math.ceil(num_examples / shard.global_batch)
  slots = np.arange(num_batches)[:, None] * shard.global_batch + shard.offset + np.arange(shard.local_batch)[None, :]
  images, labels = tf.constant(images), tf.constant(labels)

  def batch(slots):
    real = slots < num_examples
    indices = tf.minimum(slots, num_examples - 1)
    batch_images = preprocess(tf.gather(images, indices), None)
    return {
      "image": tf.where(real[:, None, None, None], batch_images, 0.0),
      "label": tf.where(real, tf.gather(labels, indices), 0),
      "mask": real,
    }

  return tf.data.Dataset.from_tensor_slices(slots).map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _epoch_shuffle_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _imagenet_train(
  shard: Shard, seed: int, start_step: int, data_dir, image_size: int, training_labels: TrainingLabels
) -> Iterator[Batch]:
  split = tfds.split_for_jax_process(imagenet.TRAIN_SPLIT, process_index=shard.index, process_count=shard.count)
  num_train, _ = imagenet.split_sizes(data_dir)
  steps = num_train // shard.global_batch
  if steps == 0:
    raise ValueError(
      f"global_batch_size={shard.global_batch} exceeds the {num_train} training examples of imagenet2012."
    )
  augment_key = _stream_key(seed, _AUGMENT_STREAM)
  local_batch = shard.local_batch

  def epoch_batches(epoch: int, first_step: int) -> tf.data.Dataset:
    shuffle_seed = _epoch_shuffle_seed(seed, epoch)
    records = (
      imagenet.read(split, data_dir=data_dir, shuffle_seed=shuffle_seed)
      .shuffle(IMAGENET_SHUFFLE_BUFFER, seed=shuffle_seed)
      .take(steps * local_batch)
      .skip(first_step * local_batch)  # still encoded: no decoding wasted
      .enumerate(start=first_step * local_batch)
    )

    def example(i, record):
      step = epoch * steps + i // local_batch
      position = step * shard.global_batch + shard.offset + i % local_batch
      key = tf.random.experimental.stateless_fold_in(augment_key, position)
      label = label_noise.corrupt(  # keyed by the file name: the same in every order and process
        record["label"],
        record["file_name"],
        num_classes=imagenet.NUM_CLASSES,
        rate=training_labels.label_noise,
        seed=training_labels.label_noise_seed,
      )
      return {"image": imagenet.train_preprocess(record["image"], key, image_size=image_size), "label": label}

    return (
      records.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      .batch(local_batch, drop_remainder=True)
      .prefetch(tf.data.AUTOTUNE)
    )

  def batches(epoch: int, first_step: int, first: tf.data.Dataset) -> Iterator[Batch]:
    ds = first
    while True:
      produced = 0
      for batch in ds.as_numpy_iterator():
        produced += 1
        yield batch
      if produced == 0 and first_step == 0:
        raise ValueError(
          f"This process's part of the imagenet2012 train split holds fewer than local batch {local_batch} examples."
        )
      epoch, first_step = epoch + 1, 0
      ds = epoch_batches(epoch, first_step)

  epoch, first_step = divmod(start_step, steps)
  # Built here, not in the generator, so that a missing dataset fails right away.
  return batches(epoch, first_step, epoch_batches(epoch, first_step))


@functools.lru_cache(maxsize=2)
def _imagenet_eval_crops(shard_index: int, shard_count: int, data_dir, image_size: int, reader) -> tf.data.Dataset:
  """This process's test examples {"image": uint8 crop, "label"}, cached in memory once read."""
  del reader  # part of the cache key only
  split = tfds.split_for_jax_process(imagenet.TEST_SPLIT, process_index=shard_index, process_count=shard_count)

  def example(record):
    return {
      "image": imagenet.eval_crop(record["image"], image_size=image_size),
      "label": tf.cast(record["label"], tf.int32),
    }

  return (
    imagenet.read(split, data_dir=data_dir)
    .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    .cache()
  )


def _imagenet_eval(shard: Shard, data_dir, image_size: int) -> tf.data.Dataset:
  # Every process pads its part to the same number of batches. The padding is counted
  # exactly (no `take` after the cache): a cache read only partly would be dropped.
  local_sizes = [
    imagenet.split_size(
      tfds.split_for_jax_process(imagenet.TEST_SPLIT, process_index=index, process_count=shard.count), data_dir=data_dir
    )
    for index in range(shard.count)
  ]
  num_batches = math.ceil(max(local_sizes) / shard.local_batch)
  num_padding = num_batches * shard.local_batch - local_sizes[shard.index]
  crops = _imagenet_eval_crops(shard.index, shard.count, data_dir, image_size, tfds_reader_identity())

  def normalise(example):
    return {
      "image": augment.normalize(example["image"], imagenet.MEAN, imagenet.STD),
      "label": example["label"],
      "mask": tf.constant(True),
    }

  padding = tf.data.Dataset.from_tensors(
    {
      "image": tf.zeros([image_size, image_size, 3], tf.float32),
      "label": tf.constant(0, tf.int32),
      "mask": tf.constant(False),
    }
  ).repeat(num_padding)
  return (
    crops.map(normalise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    .concatenate(padding)
    .batch(shard.local_batch)
  )


def train_iterator(
  name: str,
  *,
  global_batch_size: int,
  seed: int = 0,
  start_step: int = 0,
  data_dir: str | None = None,
  image_size: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  num_devices: int | None = None,
  synthetic=None,
  labels: TrainingLabels = TrainingLabels(),
) -> Iterator[Batch]:
  """Endless training batches of this process: {"image": float32 [b, H, W, C], "label": int32 [b]}.

  b = global_batch_size / process_count. An epoch is num_train // global_batch_size
  steps (the remainder is dropped), each a fresh shuffle. With `start_step=n` the
  iterator yields exactly what an uninterrupted one yields from its n-th batch on.
  `labels` sets the label noise and the validation subset left out of training.
  """
  info = dataset_info(name, image_size=image_size, synthetic=synthetic, validation_fraction=labels.validation_fraction)
  shard = shard_for(
    global_batch_size, process_index=process_index, process_count=process_count, num_devices=num_devices
  )
  _check_seed(seed)
  validation.integer("start_step", start_step, 0)
  if name == "synthetic":
    return synthetic_data.train_batches(
      synthetic or synthetic_data.Spec(),
      seed=seed,
      start_step=start_step,
      global_batch=shard.global_batch,
      offset=shard.offset,
      local_batch=shard.local_batch,
      label_noise=labels.label_noise,
      label_noise_seed=labels.label_noise_seed,
    )
  if name == "imagenet2012":
    return _imagenet_train(shard, seed, start_step, data_dir, info.image_shape[0], labels)
  ds = _in_memory_train(name, shard, seed, start_step, data_dir, labels)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_iterator(
  name: str,
  *,
  global_batch_size: int,
  data_dir: str | None = None,
  image_size: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  num_devices: int | None = None,
  synthetic=None,
  split: str = "test",
  labels: TrainingLabels = TrainingLabels(),
) -> Iterator[Batch]:
  """Every example of `split` once: {"image", "label", "mask": bool [b]}, padding masked out.

  `split`: "test"; "validation", the subset `labels.validation_fraction` holds
  out (clean labels; digits, CIFAR and synthetic); "train", the examples that train,
  with their training labels (noisy under `labels.label_noise`: the accuracy there
  measures memorisation), without augmentation (digits and CIFAR).
  All processes yield the same number of batches (needed for multi-host jit).
  """
  validation.one_of("split", split, SPLITS)
  info = dataset_info(name, image_size=image_size, synthetic=synthetic, validation_fraction=labels.validation_fraction)
  shard = shard_for(
    global_batch_size, process_index=process_index, process_count=process_count, num_devices=num_devices
  )
  available = {"test": DATASETS, "validation": WITH_VALIDATION, "train": IN_MEMORY}[split]
  if name not in available:
    raise ValueError(f"split={split!r} is available for {', '.join(available)} only, not {name}.")
  if split == "validation" and not info.num_validation:
    raise ValueError("split='validation' needs labels.validation_fraction > 0 (config.validation_fraction).")
  if name == "synthetic":
    return synthetic_data.eval_batches(
      synthetic or synthetic_data.Spec(),
      global_batch=shard.global_batch,
      offset=shard.offset,
      local_batch=shard.local_batch,
      split=split,
      num_validation=info.num_validation,
    )
  if name == "imagenet2012":
    ds = _imagenet_eval(shard, data_dir, info.image_shape[0])
  else:
    ds = _in_memory_eval(name, split, shard, data_dir, labels)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
