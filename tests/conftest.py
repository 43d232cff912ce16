"""Test-wide setup and the fixtures every directory shares.

Eight virtual CPU devices, so sharding tests need no TPU: XLA reads the flag
once, when jax initialises its backends, so it is set before anything imports
jax. Helpers (not fixtures) are in tests/helpers.py. Nothing here imports
Flax, TensorFlow or orbax at import time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax
import pytest


@pytest.fixture
def x64():
  """float64 for one test, restoring the previous setting afterwards."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def one_device_mesh():
  """A training mesh of this process's first device."""
  from msam_jax.training.mesh import create_mesh  # the train extra

  return create_mesh(jax.devices()[:1])


@pytest.fixture
def mock_tfds():
  """Mocked TFDS (`tfds.testing.mock_data`, 64 random examples per split).

  It patches file-system calls while it builds datasets, so the runs under it
  checkpoint synchronously (no orbax thread may touch files then).
  """
  import tensorflow_datasets as tfds  # the data extra

  with tfds.testing.mock_data(num_examples=64):
    yield
