"""A validation subset carved from the training split: fixed, stratified, clean labels.

`config.validation_fraction = f` holds out round(f * n) of the n training
examples of digits or CIFAR; they never train, and evaluation reports their
accuracy and loss beside the test split's, so hyper-parameters can be chosen
without looking at the test split. The subset is stratified: each class gives
its share of round(f * n), apportioned by largest remainder, so class balance
is that of the training split. Which examples of a class are held out is fixed
by `SEED` (a constant: the subset is the same for every training seed, noise
seed and optimizer, and across processes and restarts). Held-out examples keep
their clean labels; label noise (label_noise.py) only changes what trains.
"""

import numbers

import numpy as np

from msam_jax import validation

SEED = 20_240_521  # fixed: one validation subset per dataset and fraction


def check(fraction) -> None:
  """Raises ValueError (one line) unless `fraction` is a number in [0, 1)."""
  if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
    validation.fail("validation_fraction", fraction, "a number in [0, 1)")
  validation.in_interval("validation_fraction", fraction, 0.0, 1.0, low_closed=True, high_closed=False)


def size(num_train: int, fraction: float) -> int:
  """How many of `num_train` examples the validation subset holds."""
  check(fraction)
  return int(round(fraction * num_train))


def split(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(indices that train, validation indices), both sorted, disjoint, covering `labels`.

  The validation subset holds `size(len(labels), fraction)` indices, each class
  as close to its proportional share as integers allow.
  """
  labels = np.asarray(labels)
  total = size(len(labels), fraction)
  classes, counts = np.unique(labels, return_counts=True)
  quota = counts * total / len(labels)
  share = np.floor(quota).astype(int)
  # Largest remainder first (ties: the smaller class index), until the total is reached.
  remainder_order = np.lexsort((classes, -(quota - share)))
  share[remainder_order[: total - share.sum()]] += 1
  rng = np.random.default_rng(SEED)
  held_out = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share)]
  held_out = np.sort(np.concatenate(held_out)) if held_out else np.zeros([0], np.int64)
  keep = np.setdiff1d(np.arange(len(labels)), held_out)
  return keep, held_out
