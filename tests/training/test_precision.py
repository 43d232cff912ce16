"""Computation dtypes: bfloat16 end to end, float16 with a loss scale; the synthetic dataset through the loop."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msam_jax import training

from helpers import final_checkpoint, load_config

TINY_SYNTHETIC = dict(
  dataset="synthetic",
  validation_fraction=0.0,  # these tests need no validation split
  model="cnn",
  model_kwargs={"width": 8},
  batch_size=16,
  eval_batch_size=32,
  num_train_steps=6,
  log_every_steps=3,
  bn_recompute_batches=2,
  async_checkpointing=False,
)


def _synthetic_config(**overrides):
  config = load_config("digits", **{**TINY_SYNTHETIC, **overrides})
  config.synthetic.update({"image_shape": (8, 8, 3), "num_classes": 7, "num_train": 160, "num_test": 40})
  return config


@pytest.mark.slow  # the training loop end to end
def test_synthetic_dataset_runs_the_loop_end_to_end(tmp_path, one_device_mesh):
  results = training.train_and_evaluate(_synthetic_config(), str(tmp_path), mesh=one_device_mesh)
  assert results["dataset"] == "synthetic" and results["steps"] == 6
  assert results["epochs"] == 6 / 10 and np.isfinite(results["final_eval_loss"])
  assert results["steps_per_second"] > 0
  assert "final_eval_accuracy_top5" in results  # 7 classes
  # results.json holds the sharpness only with sharpness_every_steps > 0 (the README says so; test_train.py has it)
  assert not [k for k in results if "sharpness" in k or "hessian" in k], results


def test_bad_synthetic_shape_is_a_config_error(tmp_path, one_device_mesh):
  config = _synthetic_config()
  config.synthetic.image_shape = (8, 8)
  with pytest.raises(training.ConfigError, match=re.escape("config.synthetic: synthetic image_shape")):
    training.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)


def test_synthetic_images_must_fit_a_model_built_for_one_image_size(tmp_path, one_device_mesh):
  """ViT is built for config.image_size, which synthetic images follow unless a shape is set by hand."""
  vit = load_config("imagenet_vit", dataset="synthetic")
  training.validate(training.resolve(vit), num_devices=1)  # 224x224x3, as the model
  vit.synthetic.image_shape = (32, 32, 3)
  with pytest.raises(training.ConfigError, match=r"^config.image_size=224 \(vit takes 224x224 images\)[^\n]*32x32"):
    training.train_and_evaluate(vit, str(tmp_path / "vit"), mesh=one_device_mesh)
  assert not (tmp_path / "vit").exists()
  resnet = load_config("imagenet_resnet50", dataset="synthetic", **{"synthetic.image_shape": (32, 32, 3)})
  training.validate(training.resolve(resnet), num_devices=1)  # a ResNet takes any size


@pytest.mark.slow  # the training loop end to end
@pytest.mark.parametrize("optimizer", ["msam", "esam"])
def test_float16_runs_the_loop_with_a_loss_scale(tmp_path, one_device_mesh, optimizer):
  """The loop wraps the optimizer in dynamic loss scaling; the scale is checkpointed."""
  results = training.train_and_evaluate(
    _synthetic_config(dtype="float16", optimizer=optimizer, rho=0.05), str(tmp_path), mesh=one_device_mesh
  )
  assert np.isfinite(results["final_eval_loss"])
  _, state = final_checkpoint(str(tmp_path))
  assert float(state["opt_state"]["scale"]) >= 1.0


@pytest.mark.slow  # the training loop end to end
def test_bfloat16_keeps_parameters_state_and_norm_statistics_in_float32(tmp_path, one_device_mesh):
  """Computation in bfloat16; everything the run carries stays float32."""
  config = _synthetic_config(dtype="bfloat16", optimizer="msam", num_train_steps=2)
  training.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  _, state = final_checkpoint(str(tmp_path))
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and {x.dtype for x in floats} == {np.dtype(np.float32)}
  assert state["batch_stats"]  # the CNN's batch norm statistics are among them


@pytest.mark.slow  # compiles a training step of the digits CNN
def test_bfloat16_computes_in_bfloat16():
  from msam_jax import models

  model = models.build("cnn", 10, width=8, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, jnp.zeros((2, 8, 8, 1))).as_text()
  assert re.search(r"convolution.*bf16", hlo)


@pytest.mark.slow  # two training runs
def test_bfloat16_reaches_float32_accuracy_on_digits(tmp_path, one_device_mesh):
  """Same seed and schedule; 360 test images give a binomial std of about 1.2 points at 95%."""
  accuracy = {}
  for dtype in ("float32", "bfloat16"):
    config = load_config(
      "digits", dtype=dtype, num_epochs=10, eval_every_epochs=10, checkpoint_every_steps=0, async_checkpointing=False
    )
    accuracy[dtype] = training.train_and_evaluate(config, str(tmp_path / dtype), mesh=one_device_mesh)[
      "final_eval_accuracy"
    ]
  assert accuracy["float32"] > 0.9, accuracy
  assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.035, accuracy
