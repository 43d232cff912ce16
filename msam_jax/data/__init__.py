"""Input pipelines: TFDS / tf.data datasets, augmentation, per-process sharding.

info = data.dataset_info("cifar100")
for batch in data.train_iterator("cifar100", global_batch_size=128, seed=0): ...
"""

from msam_jax._extras import require

require("data")

import tensorflow as tf

# tf.data only runs on the host; keep TensorFlow off any accelerator JAX owns.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices: too late, and harmless on CPU.
  pass

from msam_jax.data import prefetch  # noqa: E402
from msam_jax.data.datasets import DATASETS  # noqa: E402
from msam_jax.data.datasets import DatasetInfo  # noqa: E402
from msam_jax.data.datasets import DatasetNotFoundError  # noqa: E402
from msam_jax.data.datasets import dataset_info  # noqa: E402
from msam_jax.data.datasets import steps_per_epoch  # noqa: E402
from msam_jax.data.pipeline import eval_iterator  # noqa: E402
from msam_jax.data.pipeline import train_iterator  # noqa: E402
from msam_jax.data import synthetic  # noqa: E402

__all__ = [
  "DATASETS",
  "DatasetInfo",
  "DatasetNotFoundError",
  "dataset_info",
  "eval_iterator",
  "prefetch",
  "steps_per_epoch",
  "synthetic",
  "train_iterator",
]
