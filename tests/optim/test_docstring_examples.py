"""The `Examples` sections of the docstrings run as doctests (core install: optim and analysis).

The README's test command runs them, so an example that stops working fails CI.
"""

import doctest
import importlib
import inspect
import io
import pkgutil

import pytest

import msam_jax
import msam_jax.analysis
import msam_jax.optim

MODULES = sorted(
  info.name
  for package in (msam_jax.optim, msam_jax.analysis)
  for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
  module = importlib.import_module(module_name)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  out = io.StringIO()
  for test in doctest.DocTestFinder().find(module, module_name):
    runner.run(test, out=out.write)
  assert runner.failures == 0, out.getvalue()


@pytest.mark.parametrize("name", [n for n in msam_jax.__all__ if inspect.isfunction(getattr(msam_jax, n))])
def test_every_top_level_optimizer_function_has_a_runnable_example(name):
  tests = doctest.DocTestFinder(recurse=False).find(getattr(msam_jax, name), name)
  assert tests and tests[0].examples, f"msam_jax.{name}'s docstring needs an Examples section with >>> lines"
