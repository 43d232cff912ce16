"""Input pipelines: TFDS / tf.data datasets, augmentation, per-process sharding.

info = data.dataset_info("cifar100")
for batch in data.train_iterator("cifar100", global_batch_size=128, seed=0): ...

Label noise and a validation subset (config.label_noise, label_noise_seed,
validation_fraction) are `TrainingLabels`, passed to both iterators:

labels = data.TrainingLabels(label_noise=0.4, label_noise_seed=0, validation_fraction=0.1)
data.train_iterator("digits", global_batch_size=64, labels=labels)  # noisy labels, validation left out
data.eval_iterator("digits", global_batch_size=128, split="validation", labels=labels)  # clean labels
data.eval_iterator("digits", global_batch_size=128, split="train", labels=labels)  # as trained: memorisation

See label_noise.py (symmetric noise, fixed per example) and validation_split.py
(fixed, stratified subset of the training split).
"""

from msam_jax._extras import require

require("data")

import tensorflow as tf

# tf.data only runs on the host; keep TensorFlow off any accelerator JAX owns.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices: too late, and harmless on CPU.
  pass

from msam_jax.data import prefetch
from msam_jax.data.datasets import DATASETS
from msam_jax.data.datasets import DatasetInfo
from msam_jax.data.datasets import DatasetNotFoundError
from msam_jax.data.datasets import dataset_info
from msam_jax.data.datasets import steps_per_epoch
from msam_jax.data.pipeline import SPLITS
from msam_jax.data.pipeline import TrainingLabels
from msam_jax.data.pipeline import eval_iterator
from msam_jax.data.pipeline import realised_noise_fraction
from msam_jax.data.pipeline import train_iterator
from msam_jax.data import label_noise
from msam_jax.data import synthetic
from msam_jax.data import validation_split

__all__ = [
  "DATASETS",
  "DatasetInfo",
  "DatasetNotFoundError",
  "SPLITS",
  "TrainingLabels",
  "dataset_info",
  "eval_iterator",
  "label_noise",
  "prefetch",
  "realised_noise_fraction",
  "steps_per_epoch",
  "synthetic",
  "train_iterator",
  "validation_split",
]
