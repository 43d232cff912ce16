"""Analysis tools that work on any ``loss_fn(params) -> scalar``."""

from msam_jax.analysis.sharpness import hessian_max_eigenvalue
from msam_jax.analysis.sharpness import hessian_vector_product
from msam_jax.analysis.sharpness import sam_sharpness
from msam_jax.analysis.sharpness import sharpness_metrics

__all__ = [
  "hessian_max_eigenvalue",
  "hessian_vector_product",
  "sam_sharpness",
  "sharpness_metrics",
]
