"""Fixtures of the input-pipeline tests: a tiny imagenet2012 in the real TFDS format.

`tfds.testing.mock_data` ignores sub-splits (every process would get the same
examples), so the sharding, resume and padding tests of the ImageNet stream
read a small dataset written exactly as `tfds build` lays it out.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

_SHARDS = {"train": (20, 20, 20), "validation": (11, 10)}  # examples per file
_FIRST_LABEL = {"train": 0, "validation": 100}


@dataclasses.dataclass(frozen=True)
class FakeImagenet:
  data_dir: str
  train_labels: np.ndarray  # every label once; a label names its example
  validation_labels: np.ndarray


@pytest.fixture(scope="session")
def fake_imagenet(tmp_path_factory) -> FakeImagenet:
  """A data_dir with imagenet2012 of random JPEGs of 40..89 pixels a side.

  Labels are unique per example (train 0..59 in 3 files, validation 100..120
  in 2 files), so a batch's labels say which examples it holds.
  """
  root = tmp_path_factory.mktemp("tfds")
  features = tfds.builder("imagenet2012", data_dir=str(root)).info.features
  version_dir = root / "imagenet2012" / "5.1.0"
  version_dir.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for split, shard_sizes in _SHARDS.items():
    label = _FIRST_LABEL[split]
    for shard, size in enumerate(shard_sizes):
      path = version_dir / f"imagenet2012-{split}.tfrecord-{shard:05d}-of-{len(shard_sizes):05d}"
      with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(size):
          shape = (int(rng.integers(40, 90)), int(rng.integers(40, 90)), 3)
          image = rng.integers(0, 256, shape, dtype=np.uint8)
          writer.write(
            features.serialize_example({"image": image, "label": label, "file_name": f"{split}_{label}.JPEG"})
          )
          label += 1
  tfds.folder_dataset.write_metadata(data_dir=str(version_dir), features=features, split_infos=None, check_data=False)
  labels = {split: np.arange(_FIRST_LABEL[split], _FIRST_LABEL[split] + sum(sizes)) for split, sizes in _SHARDS.items()}
  return FakeImagenet(str(root), labels["train"], labels["validation"])
