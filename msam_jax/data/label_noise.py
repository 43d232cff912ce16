"""Symmetric label noise: a fixed fraction of the training labels replaced by another class.

`config.label_noise = p` gives each training example, independently, probability
p of having its label replaced by one of the other classes, drawn uniformly (the
noise of the SAM paper's label-noise experiments, Foret et al. 2021, Sec. 3.3).
A label never maps to itself, so about p of the training labels are wrong.

Whether an example is corrupted, and into which class, is a pure function of
`(label_noise_seed, the example's identity, its clean label)`: a keyed hash
(SipHash, `tf.strings.to_hash_bucket_strong`) of the identity, the same on every
machine and for every process. The identity is fixed per dataset, never a
position in a shuffled or sharded stream:

* digits, CIFAR-10/100: the example's index in the training split as stored
  (before a validation subset is carved out, so the validation fraction does
  not move the noise of the examples that still train);
* ImageNet: the record's `file_name` (e.g. ``n01440764_10026.JPEG``);
* synthetic: the example's position in the endless training stream
  (step * global batch + row): its examples never repeat, so there is no set to fix.

The noise therefore does not depend on the training seed, the shuffle, the
number of processes or a restart: every optimizer and seed of a comparison
sees the same corrupted examples. Evaluation labels are never touched.
"""

import numbers

import tensorflow as tf

from msam_jax import validation

_FLIP_STREAM, _CLASS_STREAM = 0, 1
_RESOLUTION = 1 << 53  # the flip decision compares a hash in [0, 2^53) with p * 2^53


def check(rate, seed) -> None:
  """ValueError naming the problem unless 0 <= rate < 1 and seed is an integer in [0, 2^63)."""
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
    validation.fail("label_noise", rate, "a number in [0, 1)")
  validation.in_interval("label_noise", rate, 0.0, 1.0, low_closed=True, high_closed=False)
  validation.integer("label_noise_seed", seed, 0, 2**63)


def corrupt(labels, ids, *, num_classes: int, rate: float, seed: int) -> tf.Tensor:
  """`labels` with the noise of `ids` applied: int32, same shape.

  Args:
    labels: int clean labels [n] in 0..num_classes-1 (a tensor or an array).
    ids: the examples' identities [n]: strings, or integers (turned into their
      decimal strings, so an index and its string name the same example).
    num_classes: number of classes (>= 2 for any label to change).
    rate: probability p that an example's label is replaced.
    seed: `label_noise_seed`, the hash key.
  """
  check(rate, seed)
  labels = tf.cast(labels, tf.int32)
  if rate == 0 or num_classes < 2:
    return labels
  ids = tf.convert_to_tensor(ids)
  if ids.dtype != tf.string:
    ids = tf.strings.as_string(tf.cast(ids, tf.int64))
  flip = tf.strings.to_hash_bucket_strong(ids, _RESOLUTION, key=[seed, _FLIP_STREAM]) < round(rate * _RESOLUTION)
  # An offset of 1..K-1 classes: uniform over the other classes, never the label itself.
  offset = 1 + tf.cast(tf.strings.to_hash_bucket_strong(ids, num_classes - 1, key=[seed, _CLASS_STREAM]), tf.int32)
  return tf.where(flip, (labels + offset) % num_classes, labels)
