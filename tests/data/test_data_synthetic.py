"""The synthetic dataset: step-indexed, process-count independent, padded evaluation."""

import numpy as np
import pytest

from msam_jax import data
from msam_jax.data.synthetic import Spec

SPEC = Spec(image_shape=(6, 5, 2), num_classes=3, num_train=40, num_test=7)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_info_follows_the_spec():
  info = data.dataset_info("synthetic", synthetic=SPEC)
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (3, (6, 5, 2), 40, 7)
  assert data.steps_per_epoch(info, 8) == 5


def test_batch_depends_only_on_seed_and_step():
  kwargs = dict(global_batch_size=4, num_devices=1, process_count=1, process_index=0, synthetic=SPEC)
  run = _take(data.train_iterator("synthetic", seed=1, **kwargs), 3)
  again = _take(data.train_iterator("synthetic", seed=1, **kwargs), 3)
  resumed = _take(data.train_iterator("synthetic", seed=1, start_step=2, **kwargs), 1)
  other_seed = next(data.train_iterator("synthetic", seed=2, **kwargs))
  assert run[0]["image"].shape == (4, 6, 5, 2) and run[0]["image"].dtype == np.float32
  assert run[0]["label"].dtype == np.int32 and set(run[0]["label"]) <= {0, 1, 2}
  for a, b in zip(run, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(resumed[0]["image"], run[2]["image"])
  assert not np.array_equal(run[0]["image"], run[1]["image"])
  assert not np.array_equal(run[0]["image"], other_seed["image"])


def test_processes_split_the_same_global_batch():
  one = next(
    data.train_iterator(
      "synthetic", global_batch_size=4, num_devices=2, process_count=1, process_index=0, synthetic=SPEC
    )
  )
  halves = [
    next(
      data.train_iterator(
        "synthetic", global_batch_size=4, num_devices=2, process_count=2, process_index=p, synthetic=SPEC
      )
    )
    for p in range(2)
  ]
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), one[key])


def test_eval_visits_the_test_set_once_with_padding():
  batches = list(
    data.eval_iterator(
      "synthetic", global_batch_size=4, num_devices=1, process_count=1, process_index=0, synthetic=SPEC
    )
  )
  masks = np.concatenate([b["mask"] for b in batches])
  assert len(batches) == 2 and masks.sum() == 7 and not masks[-1]
  assert not batches[-1]["image"][-1].any()
  again = next(
    data.eval_iterator(
      "synthetic", global_batch_size=4, num_devices=1, process_count=1, process_index=0, synthetic=SPEC
    )
  )
  np.testing.assert_array_equal(again["image"], batches[0]["image"])


def test_validation_split_is_fixed_held_out_and_clean():
  labels = data.TrainingLabels(label_noise=0.5, validation_fraction=0.25)
  info = data.dataset_info("synthetic", synthetic=SPEC, validation_fraction=0.25)
  assert (info.num_train, info.num_validation) == (30, 10)  # the epoch shrinks by the held-out share
  kwargs = dict(global_batch_size=4, num_devices=1, process_count=1, process_index=0, synthetic=SPEC, labels=labels)
  batches = list(data.eval_iterator("synthetic", split="validation", **kwargs))
  masks = np.concatenate([b["mask"] for b in batches])
  assert len(batches) == 3 and masks.sum() == 10 and not masks[-1]
  other_process = list(data.eval_iterator("synthetic", split="validation", **{**kwargs, "num_devices": 2}))
  np.testing.assert_array_equal(other_process[0]["image"], batches[0]["image"])  # fixed, not per-seed or layout
  test = next(data.eval_iterator("synthetic", split="test", **kwargs))
  assert not np.array_equal(test["image"], batches[0]["image"])  # its own examples
  spec = data.synthetic
  profiles, noise = spec._profiles(SPEC), spec._noise_pool(SPEC)
  clean = spec._examples(SPEC, profiles, noise, [[spec._VALIDATION_STREAM, j] for j in range(4)])[1]
  np.testing.assert_array_equal(batches[0]["label"], clean)  # label noise changes training labels only
  with pytest.raises(ValueError, match="split='train' is available for digits, cifar10, cifar100 only"):
    data.eval_iterator("synthetic", split="train", **kwargs)


def test_classes_are_learnable_from_their_pattern():
  """Nearest class mean over the noise classifies far above chance (1/3)."""
  big = Spec(image_shape=(8, 8, 3), num_classes=3, num_train=512, num_test=10)
  batch = next(
    data.train_iterator(
      "synthetic", global_batch_size=512, num_devices=1, process_count=1, process_index=0, synthetic=big
    )
  )
  x, y = batch["image"].reshape(512, -1), batch["label"]
  means = np.stack([x[y == c].mean(0) for c in range(3)])
  predicted = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (predicted == y).mean() > 0.8


@pytest.mark.parametrize("bad", [dict(image_shape=(8, 8)), dict(num_classes=0), dict(num_test=1.5)])
def test_bad_spec_names_the_field(bad):
  with pytest.raises(ValueError, match="synthetic"):
    Spec(**bad)
