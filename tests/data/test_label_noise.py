"""Label noise and the validation subset: fixed per example, of the requested size, training labels only."""

import itertools

import numpy as np
import pytest

from msam_jax import data
from msam_jax.data import label_noise, pipeline, validation_split

ONE_PROCESS = dict(process_index=0, process_count=1, num_devices=1)
NOISY = data.TrainingLabels(label_noise=0.4, label_noise_seed=3, validation_fraction=0.1)


def _corrupt(labels, ids, num_classes=10, rate=0.3, seed=0):
  return label_noise.corrupt(labels, ids, num_classes=num_classes, rate=rate, seed=seed).numpy()


def _binomial_bound(p, n, sigmas=4.5):
  return sigmas * np.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------- the noise itself


def test_noise_is_a_function_of_the_example_not_of_order_or_batching():
  rng = np.random.default_rng(0)
  labels, ids = rng.integers(0, 10, 5000), np.arange(5000)
  noisy = _corrupt(labels, ids)
  np.testing.assert_array_equal(_corrupt(labels, ids), noisy)  # deterministic
  order = rng.permutation(5000)
  np.testing.assert_array_equal(_corrupt(labels[order], ids[order]), noisy[order])  # any order, any batch
  np.testing.assert_array_equal(_corrupt(labels[17:23], ids[17:23]), noisy[17:23])
  # An index and its decimal string are the same identity; another seed is another corruption.
  np.testing.assert_array_equal(_corrupt(labels, [str(i) for i in ids]), noisy)
  assert (_corrupt(labels, ids, seed=1) != noisy).mean() > 0.2


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8])
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_noise_changes_the_requested_fraction_and_never_keeps_a_label(rate, num_classes):
  n = 20_000
  labels = np.random.default_rng(1).integers(0, num_classes, n)
  noisy = _corrupt(labels, np.arange(n), num_classes=num_classes, rate=rate)
  changed = noisy != labels
  # A label never maps to itself, so every corrupted example is a changed one: the
  # changed fraction is Binomial(n, rate) / n.
  assert abs(changed.mean() - rate) <= _binomial_bound(rate, n) + 1e-12
  assert noisy.dtype == np.int32 and noisy.min() >= 0 and noisy.max() < num_classes


def test_the_new_class_is_uniform_over_the_other_classes():
  n, k = 40_000, 5
  labels = np.zeros(n, np.int64)  # every example class 0: the new classes are 1..4
  noisy = _corrupt(labels, np.arange(n), num_classes=k, rate=0.999999)
  assert (noisy != 0).all()
  counts = np.bincount(noisy, minlength=k)[1:]
  expected = n / (k - 1)
  assert np.abs(counts - expected).max() <= 4.5 * np.sqrt(expected)


@pytest.mark.parametrize(
  "rate, seed, match",
  [
    (1.0, 0, r"label_noise must be in \[0, 1\), got 1.0"),
    (-0.1, 0, "label_noise"),
    ("0.2", 0, "label_noise"),
    (True, 0, "label_noise"),
    (0.2, -1, "label_noise_seed"),
    (0.2, 2**63, "label_noise_seed"),
    (0.2, 1.5, "label_noise_seed"),
  ],
)
def test_bad_noise_values_are_one_line_errors(rate, seed, match):
  with pytest.raises(ValueError, match=match):
    data.TrainingLabels(label_noise=rate, label_noise_seed=seed)


# ------------------------------------------------------------------- the validation subset


def test_validation_subset_is_stratified_disjoint_and_fixed():
  labels = np.repeat(np.arange(3), [500, 300, 200])
  keep, held_out = validation_split.split(labels, 0.1)
  assert len(held_out) == validation_split.size(1000, 0.1) == 100
  assert not set(keep) & set(held_out) and len(keep) + len(held_out) == 1000
  np.testing.assert_array_equal(np.bincount(labels[held_out]), [50, 30, 20])
  again_keep, again_held_out = validation_split.split(labels, 0.1)
  np.testing.assert_array_equal(again_held_out, held_out)
  # Largest remainder: 7 of 1000 -> 3.5, 2.1, 1.4 -> 4, 2, 1.
  assert np.bincount(labels[validation_split.split(labels, 0.007)[1]]).tolist() == [4, 2, 1]
  with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\), got 1.0"):
    validation_split.split(labels, 1.0)


def test_digits_validation_is_held_out_of_training_with_clean_labels():
  images, clean = pipeline._load_in_memory("digits", "train", None)
  keep, held_out = validation_split.split(clean, NOISY.validation_fraction)
  train_images, train_labels = pipeline.in_memory_arrays("digits", "train", NOISY)
  val_images, val_labels = pipeline.in_memory_arrays("digits", "validation", NOISY)
  np.testing.assert_array_equal(train_images, images[keep])
  np.testing.assert_array_equal(val_images, images[held_out])
  np.testing.assert_array_equal(val_labels, clean[held_out])  # clean
  # The noise of an example that trains does not depend on the validation fraction.
  all_noisy = _corrupt(clean, np.arange(len(clean)), rate=NOISY.label_noise, seed=NOISY.label_noise_seed)
  np.testing.assert_array_equal(train_labels, all_noisy[keep])
  info = data.dataset_info("digits", validation_fraction=NOISY.validation_fraction)
  assert (info.num_train, info.num_validation) == (len(keep), len(held_out)) == (1293, 144)
  realised = data.realised_noise_fraction("digits", NOISY)
  assert realised == np.mean(train_labels != clean[keep])
  assert abs(realised - 0.4) <= _binomial_bound(0.4, len(keep))


def _labels_of(batches):
  return np.concatenate([b["label"][b["mask"]] if "mask" in b else b["label"] for b in batches])


def test_training_batches_carry_the_noise_and_evaluation_labels_stay_clean():
  kwargs = dict(global_batch_size=64, **ONE_PROCESS)
  clean_test = _labels_of(data.eval_iterator("digits", **kwargs))
  np.testing.assert_array_equal(_labels_of(data.eval_iterator("digits", labels=NOISY, **kwargs)), clean_test)
  validation = _labels_of(data.eval_iterator("digits", split="validation", labels=NOISY, **kwargs))
  np.testing.assert_array_equal(validation, pipeline.in_memory_arrays("digits", "validation", NOISY)[1])
  # The "train" evaluation split and an epoch of training batches hold the noisy labels.
  noisy_train = pipeline.in_memory_arrays("digits", "train", NOISY)[1]
  np.testing.assert_array_equal(
    _labels_of(data.eval_iterator("digits", split="train", labels=NOISY, **kwargs)), noisy_train
  )
  steps = len(noisy_train) // 64
  epoch = _labels_of(itertools.islice(data.train_iterator("digits", labels=NOISY, **kwargs), steps))
  left_out = np.bincount(noisy_train, minlength=10) - np.bincount(epoch, minlength=10)
  assert left_out.min() >= 0 and left_out.sum() == len(noisy_train) - steps * 64  # the epoch's dropped remainder
  with pytest.raises(ValueError, match="validation_fraction > 0"):
    data.eval_iterator("digits", split="validation", **kwargs)
  with pytest.raises(ValueError, match="digits, cifar10, cifar100 only"):
    data.eval_iterator("synthetic", split="train", **kwargs)


def test_noise_is_the_same_for_two_processes_and_after_a_restart():
  def batches(start_step=0, **shard):
    return list(
      itertools.islice(
        data.train_iterator("digits", global_batch_size=64, seed=5, start_step=start_step, labels=NOISY, **shard), 4
      )
    )

  whole = batches(**ONE_PROCESS)
  halves = [batches(process_index=i, process_count=2, num_devices=2) for i in range(2)]
  for step, batch in enumerate(whole):
    np.testing.assert_array_equal(np.concatenate([h[step]["label"] for h in halves]), batch["label"])
  for got, want in zip(batches(start_step=2, **ONE_PROCESS), whole[2:]):
    np.testing.assert_array_equal(got["label"], want["label"])


def test_synthetic_noise_is_keyed_by_stream_position():
  labels = data.TrainingLabels(label_noise=0.4, label_noise_seed=1)

  def batches(start_step=0, **shard):
    it = data.train_iterator("synthetic", global_batch_size=32, seed=0, start_step=start_step, labels=labels, **shard)
    return [b["label"] for b in itertools.islice(it, 3)]

  whole = batches(**ONE_PROCESS)
  clean = [
    b["label"] for b in itertools.islice(data.train_iterator("synthetic", global_batch_size=32, **ONE_PROCESS), 3)
  ]
  halves = [batches(process_index=i, process_count=2, num_devices=2) for i in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([h[step] for h in halves]), whole[step])
    positions = step * 32 + np.arange(32)
    np.testing.assert_array_equal(whole[step], _corrupt(clean[step], positions, rate=0.4, seed=1))
  np.testing.assert_array_equal(batches(start_step=1, **ONE_PROCESS)[0], whole[1])
  assert abs(data.realised_noise_fraction("synthetic", labels, global_batch_size=32) - 0.4) <= _binomial_bound(
    0.4, 50_000
  )


@pytest.mark.slow
def test_imagenet_noise_is_keyed_by_file_name_for_two_processes(fake_imagenet):
  """An epoch's noisy labels, over both processes, are those of label_noise.corrupt of each file name."""
  labels = data.TrainingLabels(label_noise=0.5, label_noise_seed=2)
  names = [f"train_{label}.JPEG" for label in fake_imagenet.train_labels]
  want = np.sort(_corrupt(fake_imagenet.train_labels, names, num_classes=1000, rate=0.5, seed=2))
  assert (want != np.sort(fake_imagenet.train_labels)).any()
  epoch = []
  for index in range(2):
    it = data.train_iterator(
      "imagenet2012",
      global_batch_size=10,
      seed=4,
      data_dir=fake_imagenet.data_dir,
      image_size=16,
      process_index=index,
      process_count=2,
      num_devices=2,
      labels=labels,
    )
    epoch.append(_labels_of(itertools.islice(it, 6)))  # 6 steps of 5 examples: this process's 30
  np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), want)
  assert data.realised_noise_fraction("imagenet2012", labels) is None  # not counted: a pass over the split
  with pytest.raises(ValueError, match="validation_fraction=0.1 is available for digits, cifar10, cifar100, synthetic"):
    data.dataset_info("imagenet2012", validation_fraction=0.1)
