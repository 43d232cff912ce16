"""Per-process shards, exact resume, epoch reshuffling and padded evaluation."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from msam_jax import data
from msam_jax.data import cifar, imagenet, pipeline

ONE_PROCESS = dict(process_index=0, process_count=1, num_devices=1)


def _take(iterator, num):
  return list(itertools.islice(iterator, num))


def _assert_batches_equal(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for key in g:
      np.testing.assert_array_equal(g[key], w[key])


def _process_batches(make_iterator, num_processes, num_batches=None):
  """Batches of each simulated process: [process][step]."""
  out = []
  for index in range(num_processes):
    iterator = make_iterator(process_index=index, process_count=num_processes, num_devices=num_processes)
    out.append(list(iterator) if num_batches is None else _take(iterator, num_batches))
  return out


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(global_batch_size=100, num_devices=8), r"global_batch_size=100 .* 8 devices"),
    (
      dict(global_batch_size=64, num_devices=1, process_count=3, process_index=0),
      r"global_batch_size=64 .* 3 processes",
    ),
    (dict(global_batch_size=0, num_devices=1), "global_batch_size"),
    (dict(global_batch_size=64.0, num_devices=1), "global_batch_size"),
    (dict(global_batch_size=64, num_devices=1, process_count=2, process_index=2), "process_index"),
    (dict(global_batch_size=64, num_devices=1, process_count=1, process_index=0, seed=-1), "seed"),
    (dict(global_batch_size=64, num_devices=1, process_count=1, process_index=0, start_step=-1), "start_step"),
  ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.train_iterator("digits", **kwargs)


def test_defaults_come_from_jax():
  import jax  # conftest: 8 CPU devices, one process

  shard = pipeline.shard_for(64)
  assert (shard.index, shard.count) == (jax.process_index(), jax.process_count())
  with pytest.raises(ValueError, match=f"{jax.device_count()} devices"):
    pipeline.shard_for(jax.device_count() + 1)


# ------------------------------------------------------- in-memory datasets


@pytest.mark.parametrize("num_processes", [2, 4])
def test_epoch_rows_of_processes_are_disjoint_and_cover_the_epoch(num_processes):
  num_examples, global_batch = 1437, 64
  steps = num_examples // global_batch
  epochs = []
  for epoch in (0, 1):
    indices = []
    for index in range(num_processes):
      shard = pipeline.Shard(index, num_processes, global_batch)
      batches = list(pipeline._epoch_batches(num_examples, shard, 0, epoch).as_numpy_iterator())
      np.testing.assert_array_equal([step for _, step in batches], epoch * steps + np.arange(steps))
      indices.append(np.stack([rows for rows, _ in batches]))  # [steps, local batch]
    everything = np.concatenate(indices, axis=1).reshape(-1)
    assert len(everything) == steps * global_batch == len(set(everything.tolist()))
    assert everything.min() >= 0 and everything.max() < num_examples
    epochs.append(everything)
  assert not np.array_equal(*epochs)  # a fresh shuffle each epoch


@pytest.mark.parametrize("name, process_counts", [("digits", (2, 4)), ("cifar100", (2,))])
def test_processes_read_their_slices_of_the_same_global_batches(name, process_counts):
  """Two (or four) processes together yield exactly what one process yields, augmentation included."""

  def make(**kwargs):
    return data.train_iterator(name, global_batch_size=32, seed=3, **kwargs)

  with tfds.testing.mock_data(num_examples=100):
    single = _process_batches(make, 1, num_batches=5)[0]
    for num_processes in process_counts:
      shares = _process_batches(make, num_processes, num_batches=5)
      joined = [
        {key: np.concatenate([shares[p][step][key] for p in range(num_processes)]) for key in single[step]}
        for step in range(5)
      ]
      _assert_batches_equal(joined, single)


@pytest.mark.parametrize(
  "name, global_batch, start_step",
  [
    ("digits", 64, 20),  # 22 steps per epoch
    ("cifar100", 32, 2),  # mock: 100 examples, 3 steps per epoch
  ],
)
def test_restored_iterator_continues_with_the_identical_batches(name, global_batch, start_step):
  with tfds.testing.mock_data(num_examples=100):
    uninterrupted = _take(
      data.train_iterator(name, global_batch_size=global_batch, seed=5, **ONE_PROCESS), start_step + 5
    )
    restored = _take(
      data.train_iterator(name, global_batch_size=global_batch, seed=5, start_step=start_step, **ONE_PROCESS), 5
    )
  _assert_batches_equal(restored, uninterrupted[start_step:])  # crosses an epoch boundary


def test_seed_and_epoch_change_the_batches():
  def first_of_epochs(seed):
    iterator = data.train_iterator("digits", global_batch_size=479, seed=seed, **ONE_PROCESS)
    return [batch["label"] for batch in _take(iterator, 6)][::3]  # 3 steps per epoch

  epoch0, epoch1 = first_of_epochs(0)
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(first_of_epochs(0)[0], epoch0)
  assert not np.array_equal(first_of_epochs(1)[0], epoch0)


@pytest.mark.parametrize("global_batch", [64, 48, 360, 400])
def test_eval_visits_every_example_once_for_any_process_count(global_batch):
  reference = next(data.eval_iterator("digits", global_batch_size=360, **ONE_PROCESS))
  assert reference["mask"].all()
  for num_processes in (1, 2):
    shares = _process_batches(
      lambda **kw: data.eval_iterator("digits", global_batch_size=global_batch, **kw), num_processes
    )
    assert len({len(batches) for batches in shares}) == 1  # same number of batches everywhere
    assert len(shares[0]) == -(-360 // global_batch)
    # Global batch b is the processes' b-th local batches side by side.
    joined = {
      key: np.concatenate(
        [np.concatenate([shares[p][b][key] for p in range(num_processes)]) for b in range(len(shares[0]))]
      )
      for key in reference
    }
    mask = joined["mask"]
    assert mask.sum() == 360 and np.all(mask[:360]) and not np.any(mask[360:])
    np.testing.assert_array_equal(joined["image"][mask], reference["image"])
    np.testing.assert_array_equal(joined["label"][mask], reference["label"])
    assert np.all(joined["image"][~mask] == 0)


# ----------------------------------------------------------------- ImageNet


def _labels(batches):
  return np.concatenate([batch["label"] for batch in batches])


def test_imagenet_process_shards_disjoint_and_cover_the_split(fake_imagenet):
  num_train = len(fake_imagenet.train_labels)
  steps = num_train // 10

  def make(**kwargs):
    return data.train_iterator(
      "imagenet2012", global_batch_size=10, image_size=16, data_dir=fake_imagenet.data_dir, **kwargs
    )

  for num_processes in (1, 2):
    shares = _process_batches(make, num_processes, num_batches=2 * steps)
    epochs = [
      np.concatenate([_labels(share[epoch * steps : (epoch + 1) * steps]) for share in shares]) for epoch in (0, 1)
    ]
    for labels in epochs:
      np.testing.assert_array_equal(np.sort(labels), fake_imagenet.train_labels)
    if num_processes == 2:
      assert not set(_labels(shares[0][:steps])) & set(_labels(shares[1][:steps]))
    assert not np.array_equal(epochs[0], epochs[1])  # a fresh order each epoch


def test_imagenet_restored_iterator_continues_identically(fake_imagenet):
  def make(start_step=0):  # 60 examples, batch 8: 7 steps per epoch
    return data.train_iterator(
      "imagenet2012",
      global_batch_size=8,
      image_size=24,
      seed=1,
      start_step=start_step,
      data_dir=fake_imagenet.data_dir,
      **ONE_PROCESS,
    )

  uninterrupted = _take(make(), 10)
  _assert_batches_equal(_take(make(start_step=5), 5), uninterrupted[5:])


def test_imagenet_eval_visits_every_example_once(fake_imagenet):
  # 21 examples: 11 + 10 over 2 processes, and batches of 4 per process do not divide either.
  for num_processes in (1, 2):
    shares = _process_batches(
      lambda **kw: data.eval_iterator(
        "imagenet2012", global_batch_size=8, image_size=16, data_dir=fake_imagenet.data_dir, **kw
      ),
      num_processes,
    )
    assert len({len(batches) for batches in shares}) == 1
    labels = np.concatenate([_labels(batches)[np.concatenate([b["mask"] for b in batches])] for batches in shares])
    np.testing.assert_array_equal(np.sort(labels), fake_imagenet.validation_labels)
    padding = np.concatenate([b["image"][~b["mask"]] for batches in shares for b in batches])
    assert len(padding) > 0 and np.all(padding == 0)


# ------------------------------------------------- test data read once


def test_cifar_splits_are_read_once_per_process_and_tfds_context(monkeypatch):
  reads = []
  real_tfds_split = cifar.tfds_split
  monkeypatch.setattr(cifar, "tfds_split", lambda *a, **k: reads.append(a) or real_tfds_split(*a, **k))
  with tfds.testing.mock_data(num_examples=100):
    evaluations = [list(data.eval_iterator("cifar10", global_batch_size=64, **ONE_PROCESS)) for _ in range(3)]
    next(data.train_iterator("cifar10", global_batch_size=32, **ONE_PROCESS))
    next(data.train_iterator("cifar10", global_batch_size=32, seed=1, **ONE_PROCESS))
  assert len(reads) == 2  # test and train, once each
  for evaluation in evaluations[1:]:
    _assert_batches_equal(evaluation, evaluations[0])
  with tfds.testing.mock_data(num_examples=40):  # another context: its own examples
    images, _ = cifar.load_split("cifar10", "test", data_dir=None)
  assert len(images) == 40 and len(reads) == 3
  assert not images.flags.writeable


@pytest.mark.parametrize("global_batch", [8, 7])  # 21 test examples: 7 divides them exactly
def test_imagenet_eval_decodes_each_test_image_once(fake_imagenet, monkeypatch, global_batch):
  decoded = []
  real_eval_crop = imagenet.eval_crop

  def counting_eval_crop(jpeg, **kwargs):
    image = real_eval_crop(jpeg, **kwargs)
    count = tf.py_function(lambda: decoded.append(1) or 0, [], tf.int32)
    with tf.control_dependencies([count]):
      return tf.identity(image)

  monkeypatch.setattr(imagenet, "eval_crop", counting_eval_crop)
  pipeline._imagenet_eval_crops.cache_clear()  # built afresh, with the counting crop
  evaluations = [
    list(
      data.eval_iterator(
        "imagenet2012", global_batch_size=global_batch, image_size=12, data_dir=fake_imagenet.data_dir, **ONE_PROCESS
      )
    )
    for _ in range(3)
  ]
  assert len(decoded) == len(fake_imagenet.validation_labels)  # 21: the first evaluation only
  for evaluation in evaluations[1:]:
    _assert_batches_equal(evaluation, evaluations[0])
