"""msam_jax.validation: one message format, and bools are never integers anywhere."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax import analysis, validation
from msam_jax.optim import schedules


def _raises(call, message):
  with pytest.raises(ValueError) as error:
    call()
  assert str(error.value) == message


def test_one_message_format():
  _raises(lambda: validation.integer("k", 0), "k must be an integer >= 1, got 0")
  _raises(lambda: validation.integer("seed", -1, 0, 2**63), "seed must be an integer in [0, 2**63), got -1")
  _raises(lambda: validation.integer("index", 3, 0, 3), "index must be an integer in [0, 3), got 3")
  _raises(
    lambda: validation.integer("group_size", 1.0, optional=True), "group_size must be None or an integer >= 1, got 1.0"
  )
  _raises(lambda: validation.non_negative("rho", -0.5), "rho must be a number >= 0, got -0.5")
  _raises(
    lambda: validation.in_interval("b1", 1.0, 0, 1, low_closed=True, high_closed=False), "b1 must be in [0, 1), got 1.0"
  )
  _raises(lambda: validation.one_of("depth", 12, (11, 13)), "depth must be one of 11, 13, got 12")
  _raises(lambda: validation.boolean("batch_norm", "yes"), "batch_norm must be True or False, got 'yes'")


@pytest.mark.parametrize("value", [True, False, np.bool_(True), jnp.asarray(True)])
def test_bools_are_not_numbers(value):
  with pytest.raises(ValueError, match="^k must be an integer"):
    validation.integer("k", value, low=0, static=False)
  with pytest.raises(ValueError, match="^rho must be a number >= 0"):
    validation.non_negative("rho", value)
  with pytest.raises(ValueError, match=r"^momentum must be in \[0, 1\)"):
    validation.in_interval("momentum", value, 0, 1, low_closed=True, high_closed=False)


def test_what_cannot_be_checked_yet_passes():
  validation.non_negative("learning_rate", optax.linear_schedule(1.0, -1.0, 10))
  validation.non_negative("rho", np.float32(0.1))
  validation.integer("k", np.int64(3))
  validation.integer("k", jnp.asarray(3), static=False)  # optax.inject_hyperparams at init
  with pytest.raises(ValueError, match="^k must be an integer >= 1"):
    validation.integer("k", jnp.asarray(0), static=False)
  with pytest.raises(ValueError, match="^k must be an integer >= 1"):
    validation.integer("k", jnp.asarray(3))  # a shape needs a static integer

  @jax.jit
  def traced(k, rho):
    validation.integer("k", k, static=False)
    validation.non_negative("rho", rho)
    return k * rho

  assert traced(jnp.asarray(-1), jnp.asarray(-1.0)) == 1.0  # checked where concrete, not here


@pytest.mark.parametrize(
  "make, argument",
  [
    (lambda: msam_jax.looksam(msam_jax.sgd(0.1), k=True), "k"),
    (lambda: msam_jax.sam(msam_jax.sgd(0.1), group_size=True), "group_size"),
    (lambda: msam_jax.asam(msam_jax.sgd(0.1), group_size=True), "group_size"),
    (lambda: msam_jax.msam(0.1, rho=True), "rho"),
    (lambda: schedules.rho_start_ramp(0.1, steps_per_epoch=True, ramp_epochs=1), "steps_per_epoch"),
    (
      lambda: analysis.hessian_max_eigenvalue(lambda p: p @ p, jnp.ones(2), jax.random.key(0), num_iters=True),
      "num_iters",
    ),
    (lambda: analysis.sam_sharpness(lambda p: p @ p, jnp.ones(2), rho=True), "rho"),
  ],
)
def test_optimizers_and_analysis_refuse_bools(make, argument):
  with pytest.raises(ValueError, match=rf"^{argument} must be"):
    make()


@pytest.mark.parametrize(
  "module, call, argument",
  [
    ("msam_jax.models", lambda m: m.build("cnn", 10, width=True), "cnn width"),
    ("msam_jax.models", lambda m: m.build("vit", 10, heads=True), "vit heads"),
    ("msam_jax.models", lambda m: m.build("wrn", 10, width=True), "wrn width"),
    ("msam_jax.models", lambda m: m.build("vgg", 10, width=True), "vgg width"),
    ("msam_jax.models", lambda m: m.build("resnet", 10, width=True), "resnet width"),
    (
      "msam_jax.data",
      lambda d: d.pipeline.shard_for(8, process_index=0, process_count=True, num_devices=1),
      "process_count",
    ),
    (
      "msam_jax.data",
      lambda d: d.pipeline.shard_for(8, process_index=False, process_count=1, num_devices=1),
      "process_index",
    ),
    (
      "msam_jax.data",
      lambda d: d.pipeline.shard_for(8, process_index=0, process_count=1, num_devices=True),
      "num_devices",
    ),
    ("msam_jax.data.synthetic", lambda s: s.Spec(num_classes=True), "synthetic num_classes"),
    ("msam_jax.data.synthetic", lambda s: s.Spec(image_shape=(8, True, 3)), "synthetic image_shape width"),
    ("msam_jax.data.prefetch", lambda p: p.DevicePrefetcher(iter(()), lambda x: x, size=True), "size"),
  ],
)
def test_models_and_data_refuse_bools(module, call, argument):
  pytest.importorskip("flax" if module == "msam_jax.models" else "tensorflow")
  with pytest.raises(ValueError, match=rf"^{argument} must be an integer"):
    call(importlib.import_module(module))


@pytest.mark.parametrize(
  "tx, who",
  [
    (msam_jax.adamw(0.1), "weight decay"),
    (msam_jax.msam(0.1, weight_decay=1e-3), "weight decay"),
    (msam_jax.adamw_msam(0.1), "weight decay"),
    (msam_jax.sam(msam_jax.sgd(0.1)), "sam"),
    (msam_jax.gsam(msam_jax.sgd(0.1)), "gsam"),
    (msam_jax.looksam(msam_jax.sgd(0.1)), "looksam"),
  ],
)
def test_update_without_params_names_what_needs_them(tx, who):
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match=f"^{who} needs the parameters: call update"):
    tx.update(params, tx.init(params), loss_fn=lambda p, indices=None: jnp.ones(2))
