"""Images per second of the input pipelines on this machine (host CPU only).

    python -m benchmarks.input_pipeline [--batch_size 128] [--batches 20]

* digits: the real embedded data.
* CIFAR-100: `tfds.testing.mock_data` examples (random 32x32 images), run
  through the real in-memory pipeline and augmentation.
* ImageNet: synthetic JPEGs of photo-like size (500x375 and 375x500, about
  100 KB each, like ImageNet's) written in the TFDS imagenet2012 format to a
  temporary data_dir, then read by the real `train_iterator` /
  `eval_iterator`: TFDS reading, shuffle buffer, fused decode-and-crop,
  resize to 224, flip, normalise. Evaluation twice: the first pass reads and
  decodes, later ones read the in-memory cache of decoded crops.

Numbers are steady state (after warm-up batches) and include the conversion
to numpy; tf.data uses every core, so they scale with the host's cores: the
table gives images/s per core too, and the load average (other processes on
the machine take cores away).
"""

import argparse
import gc
import itertools
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from msam_jax import data

ONE_PROCESS = dict(process_index=0, process_count=1, num_devices=1)
WARMUP_BATCHES = 3


def images_per_second(iterator, batch_size: int, num_batches: int) -> float:
  for _ in range(WARMUP_BATCHES):
    next(iterator)
  start = time.perf_counter()
  for _ in itertools.islice(iterator, num_batches):
    pass
  rate = num_batches * batch_size / (time.perf_counter() - start)
  del iterator
  gc.collect()  # an abandoned tf.data iterator keeps prefetching on the shared cores
  return rate


def photo_like_jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
  """Smooth colour gradients plus texture: compresses like a photo (~100 KB at 500x375)."""
  rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
  phases = rng.uniform(0, 2 * np.pi, 3)
  base = np.stack([np.sin(4 * rows + 3 * cols + p) for p in phases], -1) * 80 + 128
  texture = rng.normal(0, 18, (height, width, 3))
  image = np.clip(base + texture, 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(image, quality=90).numpy()


def write_synthetic_imagenet(root: str, num_train: int, num_test: int, num_unique: int = 64) -> float:
  """TFDS-format imagenet2012 in `root`; returns the mean JPEG size in KB."""
  rng = np.random.default_rng(0)
  shapes = [(375, 500), (500, 375)]
  jpegs = [photo_like_jpeg(rng, *shapes[i % 2]) for i in range(num_unique)]
  features = tfds.builder("imagenet2012", data_dir=root).info.features
  version_dir = os.path.join(root, "imagenet2012", "5.1.0")
  os.makedirs(version_dir)
  for split, count, num_files in (("train", num_train, 8), ("validation", num_test, 2)):
    for shard in range(num_files):
      path = os.path.join(version_dir, f"imagenet2012-{split}.tfrecord-{shard:05d}-of-{num_files:05d}")
      with tf.io.TFRecordWriter(path) as writer:
        for i in range(shard, count, num_files):
          example = {"image": jpegs[i % num_unique], "label": i % 1000, "file_name": f"{i}.JPEG"}
          writer.write(features.serialize_example(example))
  tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features, check_data=False)
  return float(np.mean([len(j) for j in jpegs]) / 1024)


def full_pass_images_per_second(make_iterator) -> float:
  start, count = time.perf_counter(), 0
  for batch in make_iterator():
    count += len(batch["label"])
  return count / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per row")
  args = parser.parse_args()
  batch, num = args.batch_size, args.batches
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  load_before = os.getloadavg()[0]
  rows = []

  rows.append(
    (
      "digits train",
      "8x8",
      images_per_second(data.train_iterator("digits", global_batch_size=batch, **ONE_PROCESS), batch, num * 10),
    )
  )

  with tfds.testing.mock_data(num_examples=10_000):
    rows.append(
      (
        "CIFAR-100 train (flip, cutout, crop)",
        "32x32",
        images_per_second(data.train_iterator("cifar100", global_batch_size=batch, **ONE_PROCESS), batch, num * 20),
      )
    )
    rows.append(
      (
        "CIFAR-100 eval",
        "32x32",
        images_per_second(data.eval_iterator("cifar100", global_batch_size=batch, **ONE_PROCESS), batch, num * 3),
      )
    )

  with tempfile.TemporaryDirectory() as root:
    # Enough records that the timed batches stay inside one epoch.
    num_train = (WARMUP_BATCHES + num + 1) * batch
    kilobytes = write_synthetic_imagenet(root, num_train, (WARMUP_BATCHES + num) * batch)
    rows.append(
      (
        f"ImageNet train (RandomResizedCrop; JPEG ~{kilobytes:.0f} KB)",
        "224x224",
        images_per_second(
          data.train_iterator("imagenet2012", global_batch_size=batch, data_dir=root, **ONE_PROCESS), batch, num
        ),
      )
    )

    def imagenet_eval():
      return data.eval_iterator("imagenet2012", global_batch_size=batch, data_dir=root, **ONE_PROCESS)

    rows.append(
      ("ImageNet eval, first pass (centre crop, bicubic)", "224x224", full_pass_images_per_second(imagenet_eval))
    )
    rows.append(("ImageNet eval, later passes (cached crops)", "224x224", full_pass_images_per_second(imagenet_eval)))

  load_after = os.getloadavg()[0]
  print(
    f"\nInput pipelines, batch {batch}, {cores} CPU cores, load average "
    f"{load_before:.1f} before / {load_after:.1f} after (TensorFlow {tf.__version__}):\n"
  )
  print("| pipeline | output | images/s | per core |")
  print("|---|---|---:|---:|")
  for name, size, rate in rows:
    print(f"| {name} | {size} | {rate:,.0f} | {rate / cores:,.0f} |")


if __name__ == "__main__":
  main()
