"""Dataset facts, what each pipeline yields (mocked TFDS, real digits), missing-dataset errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from msam_jax import data
from msam_jax.data import cifar, digits, imagenet

ONE_PROCESS = dict(process_index=0, process_count=1, num_devices=1)


def _normalised_range(mean, std):
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return -mean / std - 1e-5, (1 - mean) / std + 1e-5


def _check_batch(batch, *, batch_size, shape, num_classes, mean, std, eval_batch=False):
  assert set(batch) == ({"image", "label", "mask"} if eval_batch else {"image", "label"})
  assert batch["image"].shape == (batch_size, *shape) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (batch_size,) and batch["label"].dtype == np.int32
  assert np.all((batch["label"] >= 0) & (batch["label"] < num_classes))
  low, high = _normalised_range(mean, std)
  assert np.all((batch["image"] >= low) & (batch["image"] <= high))
  if eval_batch:
    assert batch["mask"].dtype == bool and batch["mask"].shape == (batch_size,)


def test_dataset_info():
  assert data.DATASETS == ("digits", "cifar10", "cifar100", "imagenet2012", "synthetic")
  assert data.dataset_info("cifar100") == data.DatasetInfo("cifar100", 100, (32, 32, 3), 50_000, 10_000)
  assert data.dataset_info("cifar10").num_classes == 10
  imagenet_info = data.dataset_info("imagenet2012")
  assert (imagenet_info.image_shape, imagenet_info.num_classes) == ((224, 224, 3), 1000)
  assert (imagenet_info.num_train, imagenet_info.num_test) == (1_281_167, 50_000)
  assert data.dataset_info("imagenet2012", image_size=128).image_shape == (128, 128, 3)
  assert data.steps_per_epoch("cifar10", 128) == 390
  assert data.steps_per_epoch(data.dataset_info("digits"), 64) == 1437 // 64


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: data.dataset_info("mnist"), "digits, cifar10, cifar100, imagenet2012"),
    (lambda: data.dataset_info("cifar10", image_size=64), "image_size"),
    (lambda: data.dataset_info("imagenet2012", image_size=0), "image_size"),
    (lambda: data.steps_per_epoch("digits", 2000), "global_batch_size"),
    (lambda: data.steps_per_epoch("digits", 0), "global_batch_size"),
  ],
)
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_digits_split_matches_info_and_is_normalised():
  info = data.dataset_info("digits")
  train_images, train_labels = digits.load_split("train")
  test_images, test_labels = digits.load_split("test")
  assert (len(train_labels), len(test_labels)) == (info.num_train, info.num_test)
  assert train_images.shape[1:] == info.image_shape and train_images.max() == 16
  assert set(np.unique(test_labels)) == set(range(10))
  # Train pixels after the pipeline's preprocessing: mean 0, std 1.
  batch = next(data.eval_iterator("digits", global_batch_size=info.num_test, **ONE_PROCESS))
  mean, std = digits.normalization()
  _check_batch(
    batch, batch_size=info.num_test, shape=(8, 8, 1), num_classes=10, mean=[mean], std=[std], eval_batch=True
  )
  train = next(data.train_iterator("digits", global_batch_size=479, **ONE_PROCESS))["image"]
  assert abs(train.mean()) < 0.1 and abs(train.std() - 1) < 0.1


def test_digits_train_batch():
  batch = next(data.train_iterator("digits", global_batch_size=64, **ONE_PROCESS))
  mean, std = digits.normalization()
  _check_batch(batch, batch_size=64, shape=(8, 8, 1), num_classes=10, mean=[mean], std=[std])


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_on_mock_data(name, num_classes):
  with tfds.testing.mock_data(num_examples=150):
    train = next(data.train_iterator(name, global_batch_size=32, data_dir="/unused", **ONE_PROCESS))
    batches = list(data.eval_iterator(name, global_batch_size=64, **ONE_PROCESS))
  _check_batch(
    train, batch_size=32, shape=(32, 32, 3), num_classes=num_classes, mean=cifar.MEAN[name], std=cifar.STD[name]
  )
  for batch in batches:
    _check_batch(
      batch,
      batch_size=64,
      shape=(32, 32, 3),
      num_classes=num_classes,
      mean=cifar.MEAN[name],
      std=cifar.STD[name],
      eval_batch=True,
    )
  assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 150
  assert np.all(batches[-1]["image"][~batches[-1]["mask"]] == 0)


def test_imagenet_on_mock_data():
  # Mocked examples are random JPEGs of 5..50 pixels a side, so crops are upsampled.
  with tfds.testing.mock_data(num_examples=20):
    train_iter = data.train_iterator("imagenet2012", global_batch_size=8, image_size=64, **ONE_PROCESS)
    train = [next(train_iter) for _ in range(3)]  # the third from the mock's second pass
    evaluation = next(data.eval_iterator("imagenet2012", global_batch_size=8, image_size=64, **ONE_PROCESS))
  for batch in train:
    _check_batch(batch, batch_size=8, shape=(64, 64, 3), num_classes=1000, mean=imagenet.MEAN, std=imagenet.STD)
  _check_batch(
    evaluation, batch_size=8, shape=(64, 64, 3), num_classes=1000, mean=imagenet.MEAN, std=imagenet.STD, eval_batch=True
  )
  assert evaluation["mask"].all()


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet2012"])
@pytest.mark.parametrize("iterator", [data.train_iterator, data.eval_iterator])
def test_missing_dataset_names_dataset_dir_and_command(tmp_path, name, iterator):
  with pytest.raises(data.DatasetNotFoundError) as error:  # when created, not when first read
    iterator(name, global_batch_size=8, data_dir=str(tmp_path), **ONE_PROCESS)
  message = str(error.value)
  assert name in message and str(tmp_path) in message
  assert f"tfds build {name} --data_dir {tmp_path}" in message
  if name == "imagenet2012":
    assert f"{tmp_path}/downloads/manual/" in message
  assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained trace
  assert isinstance(error.value, ValueError)
  assert list(tmp_path.iterdir()) == []  # nothing was downloaded or written
