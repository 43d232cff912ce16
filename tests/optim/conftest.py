"""Fixtures of the optimizer tests."""
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
