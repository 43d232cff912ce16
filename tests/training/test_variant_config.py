"""Config fields of ASAM, GSAM and m-sharpness: one-line ConfigErrors for bad values."""
import pytest

from msam_jax.optim import registry
from msam_jax.training import ConfigError, base_config
from msam_jax.training.config import validate_fields


def _config(**fields):
  config = base_config()
  config.update(fields)
  return config


@pytest.mark.parametrize("fields, message", [
    (dict(optimizer="asam", asam_eta=-0.1), "config.asam_eta=-0.1 must be >= 0"),
    (dict(optimizer="gsam", gsam_alpha=1.5), "config.gsam_alpha=1.5 must be in [0, 1]"),
    (dict(optimizer="gsam", rho=0.05, gsam_rho_min=0.1), "config.gsam_rho_min=0.1 exceeds config.rho"),
    (dict(optimizer="gsam", rho_schedule="start_ramp"), "set --config.rho_schedule=const"),
    (dict(optimizer="msam", sam_group_size=8), "config.sam_group_size=8 needs an optimizer with"),
    (dict(optimizer="sam", sam_group_size=-1), "config.sam_group_size=-1 must be >= 0"),
    (dict(optimizer="sam", sam_group_size=4), "not supported by the training step yet"),
])
def test_bad_variant_fields_fail_in_one_line(fields, message):
  with pytest.raises(ConfigError) as info:
    validate_fields(_config(**fields))
  assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["asam", "adamw_asam", "gsam", "adamw_gsam"])
def test_the_variants_are_valid_optimizers(name):
  validate_fields(_config(optimizer=name))
  assert registry.get(name).family == "sam" and registry.get(name).has_groups
