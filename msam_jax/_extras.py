"""Which optional dependencies ("extras") each heavy subpackage needs.

The core install (jax, optax, numpy) gives the optimizers, `eval_params`, the
schedules and `msam_jax.analysis`. The subpackages below need more; importing
one without its extra fails with one line that names the extra to install.
"""

import importlib.util

# subpackage -> (extra, top-level modules it imports)
EXTRAS = {
  "models": ("models", ("flax",)),
  "data": ("data", ("tensorflow", "tensorflow_datasets", "sklearn")),
  "training": ("train", ("flax", "clu", "ml_collections", "orbax.checkpoint", "tensorflow", "tensorflow_datasets")),
}


def _missing(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is None
  except ModuleNotFoundError:  # the parent package of a dotted name is missing
    return True


def require(subpackage: str) -> None:
  """Raises ImportError naming the extra when a module `subpackage` needs is absent."""
  extra, modules = EXTRAS[subpackage]
  missing = [m for m in modules if _missing(m)]
  if missing:
    raise ImportError(
      f"msam_jax.{subpackage} needs {', '.join(missing)}: "
      f"pip install 'msam-jax[{extra}]' (or pip install -e '.[{extra}]')"
    )
