"""Test-wide setup: eight virtual CPU devices, so sharding tests need no TPU.

XLA reads the flag once, when jax initialises its backends, so it must be set
before anything imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
