"""What the comparison compares: the registered optimizers and its own variants of them, each with its base."""

from msam_jax.optim import registry


# Comparison entries that are a registered optimizer with some config fields set (run_config):
# "<optimizer>+mesa" runs it with the MESA loss term on (config.mesa_weight > 0, MESA_FIELDS);
# "sam_late" is SAM switched on late (Zhou et al., arXiv 2410.10373): rho 0 until
# LATE_SAM_FRACTION of training, then rho (config.rho_schedule "start_jump").
MESA_SUFFIX = "+mesa"
MESA_OPTIMIZERS = ("sgd" + MESA_SUFFIX,)
LATE_SAM = "sam_late"
LATE_SAM_FRACTION = 0.8
VARIANTS = {**{name: name.removesuffix(MESA_SUFFIX) for name in MESA_OPTIMIZERS}, LATE_SAM: "sam"}
OPTIMIZERS = registry.names() + tuple(VARIANTS)


def registry_name(name: str) -> str:
  """The registered optimizer a comparison entry trains with: 'sgd+mesa' -> 'sgd', 'sam_late' -> 'sam'."""
  return VARIANTS.get(name, name)


def comparison_name(config) -> str:
  """The comparison's name of a run's config: its optimizer, 'sam_late' for SAM's late start, '+mesa' with MESA."""
  name = LATE_SAM if config.optimizer == "sam" and config.get("rho_schedule") == "start_jump" else config.optimizer
  return name + (MESA_SUFFIX if config.get("mesa_weight", 0.0) else "")


# The default set (issue 28): each base, its MSAM and SAM variants, LookSAM, late SAM and MESA.
# Left out for the CPU budget: DROPPED (their rows are in benchmarks/results/compare_digits_noise/).
DEFAULT_OPTIMIZERS = (
  "sgd",
  "msam",
  "sam",
  LATE_SAM,
  "looksam",
  "adamw",
  "adamw_msam",
  "adamw_sam",
  "lion",
  "lion_msam",
) + MESA_OPTIMIZERS
DROPPED = tuple(name for name in OPTIMIZERS if name not in DEFAULT_OPTIMIZERS)
# The time ratio and the paired difference of each entry are taken to its base's
# (sgd, adamw or lion; an "<optimizer>+mesa" entry's base is that optimizer).
BASE_OPTIMIZER = {
  name: registry_name(name) if name in MESA_OPTIMIZERS else registry.get(registry_name(name)).base
  for name in OPTIMIZERS
}
# Optimizers that take a rho (the others ignore config.rho).
USES_RHO = tuple(name for name in OPTIMIZERS if registry.get(registry_name(name)).uses_rho)
# MESA's EMA model, reported as a row of its own beside the trained model's (SAF reports the EMA).
EMA_SUFFIX = " EMA"
for _name in MESA_OPTIMIZERS:
  BASE_OPTIMIZER[_name + EMA_SUFFIX] = BASE_OPTIMIZER[_name]
