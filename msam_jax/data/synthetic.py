"""A synthetic dataset: any image shape and class count, nothing on disk.

For timing the whole training loop (input, step, logging) without a prepared
dataset, and for tests. Example `r` of training step `n` is drawn from its own
generator keyed by (seed, n, r), so a global batch depends only on the seed
and the step (not on the number of processes), and `start_step` is free.
Test example `j` is keyed by j alone: one fixed test set for every seed; a
validation set (`validation_fraction` of `num_train`, clean labels) is fixed the
same way from its own stream, and shortens the epoch by its size as the held-out
subset of digits or CIFAR does.

With `label_noise` a training label is corrupted as label_noise.py says, keyed by
the example's stream position (step * global batch + row).

An image is its class's pattern (a row profile plus a column profile, each a
4-step function) plus one of NOISE_POOL fixed standard normal images, both
chosen by the example's key, so the task is learnable but not trivially so.
Host cost is two broadcast adds per example (still about 3 ms of one core per
224x224x3 image on this project's loaded 2-core machine: memory bound); the
loop does not prefetch it on another thread, so at high step rates it can bound
the loop.
"""

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from msam_jax import validation
from msam_jax.data import label_noise as label_noise_lib

_TRAIN_STREAM, _TEST_STREAM, _PATTERN_STREAM, _NOISE_STREAM, _VALIDATION_STREAM = 0, 1, 2, 3, 4
NOISE_POOL = 128
_PATTERN_GRID = 4
PATTERN_SCALE = 0.5  # class signal relative to unit noise


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the synthetic dataset looks like: `config.synthetic` in a training config."""

  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 10
  num_train: int = 50_000  # defines an epoch, for schedules and evaluation cadence
  num_test: int = 1_000

  def __post_init__(self):
    shape = tuple(self.image_shape)
    if len(shape) != 3:
      validation.fail("synthetic image_shape", self.image_shape, "3 integers (height, width, channels)")
    for axis, size in zip(("height", "width", "channels"), shape):
      validation.integer(f"synthetic image_shape {axis}", size)
    object.__setattr__(self, "image_shape", shape)
    for field in ("num_classes", "num_train", "num_test"):
      validation.integer(f"synthetic {field}", getattr(self, field))


def _profiles(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
  """Class means, the same for every seed: a row profile [classes, H, 1, C] plus a
  column profile [classes, 1, W, C], each a 4-step function of the position.

  Separable, so an example costs two broadcast adds (a full per-class pattern
  table would take 600 MB for ImageNet's shape, a per-example gather ~1 ms).
  """
  height, width, channels = spec.image_shape
  rng = np.random.default_rng([_PATTERN_STREAM])
  steps = rng.standard_normal((2, spec.num_classes, _PATTERN_GRID, channels), np.float32) * PATTERN_SCALE
  rows = steps[0][:, np.arange(height) * _PATTERN_GRID // height][:, :, None, :]
  cols = steps[1][:, np.arange(width) * _PATTERN_GRID // width][:, None, :, :]
  return rows, cols


def _noise_pool(spec: Spec) -> np.ndarray:
  """[NOISE_POOL, H, W, C] standard normal images, fixed: drawing fresh normals per
  example would cost milliseconds of host time per 224x224x3 image."""
  return np.random.default_rng([_NOISE_STREAM]).standard_normal((NOISE_POOL, *spec.image_shape), np.float32)


def _examples(spec: Spec, profiles, noise, keys) -> tuple[np.ndarray, np.ndarray]:
  images = np.empty((len(keys), *spec.image_shape), np.float32)
  labels = np.empty((len(keys),), np.int32)
  for i, key in enumerate(keys):
    label, index = np.random.default_rng(key).integers([spec.num_classes, NOISE_POOL])
    labels[i] = label
    np.add(noise[index], profiles[0][label], out=images[i])
    images[i] += profiles[1][label]
  return images, labels


def train_batches(
  spec: Spec,
  *,
  seed: int,
  start_step: int,
  global_batch: int,
  offset: int,
  local_batch: int,
  label_noise: float = 0.0,
  label_noise_seed: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless {"image", "label"} of rows offset..offset+local_batch-1 of each global batch.

  With `label_noise` the labels are corrupted (label_noise.py), keyed by the
  example's position in the stream, step * global_batch + row.
  """
  if global_batch > spec.num_train:
    raise ValueError(
      f"global_batch_size={global_batch} exceeds the {spec.num_train} training "
      "examples of synthetic (config.synthetic.num_train)."
    )
  profiles, noise = _profiles(spec), _noise_pool(spec)
  step = start_step
  while True:
    keys = [[_TRAIN_STREAM, seed, step, row] for row in range(offset, offset + local_batch)]
    images, labels = _examples(spec, profiles, noise, keys)
    if label_noise:
      positions = step * global_batch + np.arange(offset, offset + local_batch)
      labels = label_noise_lib.corrupt(
        labels, positions, num_classes=spec.num_classes, rate=label_noise, seed=label_noise_seed
      ).numpy()
    yield {"image": images, "label": labels}
    step += 1


def eval_batches(
  spec: Spec, *, global_batch: int, offset: int, local_batch: int, split: str = "test", num_validation: int = 0
) -> Iterator[dict[str, np.ndarray]]:
  """The test set (or, `split="validation"`, the `num_validation` validation examples) once,
  padded like the other pipelines: zero images, `mask` False."""
  stream, count = (_TEST_STREAM, spec.num_test) if split == "test" else (_VALIDATION_STREAM, num_validation)
  profiles, noise = _profiles(spec), _noise_pool(spec)
  for b in range(math.ceil(count / global_batch)):
    slots = b * global_batch + offset + np.arange(local_batch)
    real = slots < count
    images, labels = _examples(spec, profiles, noise, [[stream, int(j)] for j in np.minimum(slots, count - 1)])
    images[~real] = 0.0
    labels[~real] = 0
    yield {"image": images, "label": labels, "mask": real}
