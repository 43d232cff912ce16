"""Config fields of ASAM, GSAM and m-sharpness: one-line ConfigErrors for bad values, and the
training step's per-device groups."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, tree_arrays

from msam_jax import models
from msam_jax.optim import registry
from msam_jax.training import ConfigError, base_config, steps
from msam_jax.training import mesh as mesh_lib
from msam_jax.training.config import validate, validate_fields
from msam_jax.training import step_plan
from msam_jax.training.optimizer import build_optimizer
from msam_jax.training.train_state import create_train_state


def _config(**fields):
  config = base_config()
  config.update(fields)
  return config


@pytest.mark.parametrize(
  "fields, message",
  [
    (
      dict(optimizer="asam", optimizer_kwargs={"eta": -0.1}),
      "config.optimizer_kwargs.eta=-0.1: eta must be a number >= 0",
    ),
    (
      dict(optimizer="gsam", optimizer_kwargs={"alpha": 1.5}),
      "config.optimizer_kwargs.alpha=1.5: alpha must be in [0, 1]",
    ),
    (dict(optimizer="gsam", rho=0.05, gsam_rho_min=0.1), "config.gsam_rho_min=0.1 exceeds config.rho"),
    (dict(optimizer="gsam", rho_schedule="start_ramp"), "set --config.rho_schedule=const"),
    (dict(optimizer="msam", sam_group_size=8), "config.sam_group_size=8 needs an optimizer with"),
    (dict(optimizer="sam", sam_group_size=-1), "config.sam_group_size=-1 must be >= 0"),
  ],
)
def test_bad_variant_fields_fail_in_one_line(fields, message):
  with pytest.raises(ConfigError) as info:
    validate_fields(_config(**fields))
  assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["asam", "adamw_asam", "gsam", "adamw_gsam"])
def test_the_variants_are_valid_optimizers(name):
  validate_fields(_config(optimizer=name))
  assert registry.get(name).family == "sam" and registry.get(name).has_groups


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(optimizer="sam", sam_group_size=3), "config.sam_group_size=3 does not divide the per-device batch 8"),
    (dict(optimizer="sam", sam_group_size=2, grad_accum_steps=2), "set --config.sam_group_size=0"),
    (dict(optimizer="gsam", sam_group_size=2, dtype="float16"), "set --config.sam_group_size=0"),
    (dict(optimizer="sam", sam_group_size=2, sharding="fsdp"), "not supported with sharding fsdp"),
  ],
)
def test_group_size_must_fit_the_per_device_batch(overrides, message):
  with pytest.raises(ConfigError, match="^[^\n]*$") as info:
    validate(load_config("digits", **overrides), num_devices=8)  # batch 64: 8 per device
  assert message in str(info.value)


@pytest.mark.slow  # compiles training steps on 8 devices and on one
@pytest.mark.parametrize("optimizer, group_size", [("sam", 4), ("adamw_asam", 2), ("gsam", 4)])
def test_per_device_groups_in_training_equal_the_groups_of_the_global_batch(optimizer, group_size, monkeypatch):
  """8 devices, 4 examples each: the shard_map step (groups within each device, one pmean)
  equals the one-device step whose optimizer groups the global batch (the same optimizer
  without `axis_name`); batch norm included (statistics per group in both)."""
  config = load_config("digits", optimizer=optimizer, rho=0.1, sam_group_size=group_size)
  mesh = mesh_lib.create_mesh()
  assert mesh.size == 8
  model = models.build("cnn", 10, width=4)
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.normal(size=(32, 8, 8, 1)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 10, 32), jnp.int32),
  }
  per_device = build_optimizer(config, steps_per_epoch=10)
  monkeypatch.setattr(step_plan, "DATA_AXIS", None)  # group_size=m on the whole batch
  whole_batch = build_optimizer(config, steps_per_epoch=10)
  results = []
  for tx, group_mesh in ((per_device, mesh), (whole_batch, None)):
    state = create_train_state(model, tx, jax.random.key(0), image_shape=(8, 8, 1))
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=0.1, group_mesh=group_mesh))
    b = batch if group_mesh is None else jax.device_put(batch, mesh_lib.batch_sharding(mesh))
    for _ in range(2):
      state, m = step(state, b, jax.random.key(1))
    results.append((state, m.compute()))
  (a, ma), (b, mb) = results
  assert "grad_norm" not in ma
  assert not np.allclose(
    tree_arrays(a.params)[0],
    tree_arrays(create_train_state(model, per_device, jax.random.key(0), image_shape=(8, 8, 1)).params)[0],
  )
  for x, y in zip(tree_arrays(a), tree_arrays(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)


class _DropoutNet(nn.Module):
  """Dropout between two dense layers: the gradient depends on the mask."""

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(16)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(nn.Dropout(0.5, deterministic=not train)(h))


@pytest.mark.slow  # compiles training steps on 8 devices and on one
def test_per_device_groups_draw_their_own_dropout_masks():
  """Every device holds the same examples: with one dropout key for all devices
  each device's group gradient would be the same, and the 8-device step would
  equal the step of one device on its own batch (as it did)."""
  config = load_config("digits", optimizer="sam", rho=0.1, sam_group_size=2)
  tx = build_optimizer(config, steps_per_epoch=10)
  model = _DropoutNet()
  rng = np.random.default_rng(0)
  one = {"image": rng.normal(size=(2, 4, 4, 1)).astype(np.float32), "label": rng.integers(0, 10, 2).astype(np.int32)}
  params = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = mesh_lib.create_mesh(devices)
    batch = jax.device_put(
      {k: np.tile(v, (mesh.size,) + (1,) * (v.ndim - 1)) for k, v in one.items()}, mesh_lib.batch_sharding(mesh)
    )
    state = create_train_state(model, tx, jax.random.key(0), image_shape=(4, 4, 1))
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=0.0, group_mesh=mesh))
    params.append(step(state, batch, jax.random.key(1))[0].params)
  eight, single = (tree_arrays(p) for p in params)
  assert len(jax.devices()) == 8
  assert max(float(np.abs(a - b).max()) for a, b in zip(eight, single)) > 1e-4
