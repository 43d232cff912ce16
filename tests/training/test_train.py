"""The training loop in-process: end to end on digits, every optimizer, the real configs on mock data."""

import functools
import json
import os
import re

import jax
import numpy as np
import pytest

import msam_jax
from msam_jax import training
from msam_jax.optim import registry
from msam_jax.training import config as config_lib
from msam_jax.training import loop, setup, steps
from msam_jax.training.config import OPTIMIZERS
from msam_jax.training.mesh import create_mesh

from helpers import REPO, everyday, final_checkpoint, iter_eqns, load_config, tree_arrays


@pytest.mark.slow
def test_digits_default_config_end_to_end(tmp_path, one_device_mesh):
  """The README's first command: msam on digits above 95%, with events, checkpoints, results."""
  results = training.train_and_evaluate(load_config("digits"), str(tmp_path), mesh=one_device_mesh)
  assert results["optimizer"] == "msam"
  assert results["final_eval_accuracy"] > 0.95
  assert "eval_accuracy_before_bn_recompute" in results
  # Every evaluation of an MSAM run uses batch-norm statistics recomputed at the unperturbed point,
  # the periodic ones too: the last step's evaluation is the final model's.
  last = results["eval_history"][-1]
  assert last["step"] == results["steps"]
  assert last["accuracy"] == results["final_eval_accuracy"]
  assert last["validation_loss"] == results["final_validation_loss"]
  on_disk = json.loads((tmp_path / "results.json").read_text())
  for key in (
    "optimizer",
    "dataset",
    "model",
    "steps",
    "train_seconds",
    "steps_per_second",
    "final_eval_accuracy",
    "final_eval_loss",
    "eval_accuracy_before_bn_recompute",
  ):
    assert key in on_disk, key
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
  step, _ = final_checkpoint(str(tmp_path))
  assert step == results["steps"]
  # The best model on validation: the best of the evaluations and the final (recomputed) model.
  candidates = [
    *results["eval_history"],
    {"step": step, **{k[6:]: v for k, v in results.items() if k.startswith("final_")}},
  ]
  best_accuracy = max(e["validation_accuracy"] for e in candidates)
  assert on_disk["best_validation_accuracy"] == best_accuracy >= on_disk["final_validation_accuracy"]
  assert os.listdir(tmp_path / "best_model") == [str(on_disk["best_step"])]
  assert on_disk["best_model"] == str(tmp_path / "best_model" / str(on_disk["best_step"]))


@pytest.mark.parametrize("optimizer", everyday(OPTIMIZERS, keep=("msam", "sam")))
def test_every_optimizer_trains_through_the_setup(one_device_mesh, optimizer):
  """What the loop runs for each registered optimizer, on a tiny CNN and synthetic 8x8 images:
  two jitted train steps (metrics merged, no non-finite step), the batch-norm recomputation and
  the evaluation at the unperturbed parameters. New registry entries join automatically."""
  config = load_config(
    "digits",
    optimizer=optimizer,
    rho=0.05,
    dataset="synthetic",
    validation_fraction=0.0,
    batch_size=16,
    eval_batch_size=16,
    model_kwargs={"width": 4},
  )
  config.synthetic = {"image_shape": (8, 8, 1), "num_classes": 10, "num_train": 64, "num_test": 20}
  s = setup.build(config, one_device_mesh)
  state = s.init_state()
  initial = tree_arrays(state.params)  # the step donates the state
  acc, first_bad = s.empty_metrics()
  batches = s.train_batches(seed=config.seed)
  for step in range(2):
    state, acc, first_bad = s.train_step_at(step)(state, acc, first_bad, s.global_batch(next(batches)), s.dropout_rng)
  assert int(state.step) == 2 and int(first_bad) == -1
  train = acc.compute()
  assert {"loss", "accuracy", "learning_rate", "rho", "grad_norm"} <= set(train)
  assert np.isfinite(float(train["loss"])) and float(train["learning_rate"]) > 0
  assert np.isnan(float(train["rho"])) == (registry.get(optimizer).family == "base")
  moved = [not np.array_equal(a, b) for a, b in zip(initial, tree_arrays(state.params))]
  assert any(moved)
  batch_stats = loop._recompute_batch_norm(s, state, 1)
  assert not all(np.array_equal(a, b) for a, b in zip(tree_arrays(batch_stats), tree_arrays(state.batch_stats)))
  metrics = loop.evaluate(s, state, s.test_batches(), batch_stats)
  assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1
  unperturbed = tree_arrays(msam_jax.eval_params(state.params, state.opt_state))
  perturbed = registry.get(optimizer).family == "msam"
  assert perturbed == any(not np.array_equal(a, b) for a, b in zip(unperturbed, tree_arrays(state.params)))


CONDITIONAL = re.compile(r"stablehlo\.(case|if)\b")


@pytest.mark.parametrize(
  "optimizer,overrides,picked",
  [
    ("looksam", {}, lambda counts: counts % 5 == 0),
    ("rst", {}, lambda counts: np.asarray(jax.vmap(lambda c: msam_jax.optim.rst_coin(c, 0.5, 0))(counts))),
    ("sam", {"rho_schedule": "start_jump", "rho_jump_epochs": 1.0}, lambda counts: counts >= 3),  # 3 steps/epoch
  ],
)
def test_the_setup_decides_the_second_gradient_on_the_host_and_compiles_no_conditional(
  one_device_mesh, optimizer, overrides, picked
):
  """The loop's steps for looksam, rst and late SAM: each update's variant from the host's plan
  (LookSAM's every 5th, RST's draws, SAM where rho > 0), and neither variant's lowered program
  holds a conditional, which the step without the host's decision (lax.cond) does."""
  config = load_config(
    "digits",
    optimizer=optimizer,
    num_train_steps=8,
    dataset="synthetic",
    validation_fraction=0.0,
    batch_size=16,
    model_kwargs={"width": 4},
    **overrides,
  )
  config.synthetic = {"image_shape": (8, 8, 1), "num_classes": 10, "num_train": 48, "num_test": 16}
  s = setup.build(config, one_device_mesh)
  counts = np.arange(s.num_steps)
  np.testing.assert_array_equal(s.second_gradients, picked(counts))
  assert {s.step_variant(c) for c in counts} == {True, False}
  assert set(s.train_steps) == {True, False}
  args = (s.init_state(), *s.empty_metrics(), s.global_batch(next(s.train_batches(seed=0))), s.dropout_rng)
  for variant, step in s.train_steps.items():
    assert not CONDITIONAL.search(step.lower(*args).as_text()), variant
  if optimizer != "sam":  # the control: the same step left to the optimizer's lax.cond
    control = jax.jit(
      functools.partial(steps.train_step, model=s.model, tx=s.tx, label_smoothing=config.label_smoothing)
    )
    assert CONDITIONAL.search(control.lower(args[0], args[3], args[4]).as_text())


@pytest.mark.parametrize(
  "mode",
  [
    {},
    {"grad_accum_steps": 2},
    {"sam_group_size": 2},  # per device, under shard_map on 8 devices
    {"dtype": "float16"},
    {"mesa_weight": 0.3, "mesa_start_epoch": 0.0},
  ],
  ids=["plain", "accumulated", "per_device_groups", "float16", "mesa"],
)
def test_every_first_pass_mode_passes_the_hosts_decision_to_the_optimizer(mode):
  """sam with a rho schedule from 0: the setup's step without the second gradient has fewer
  convolutions (forward and backward) than the step with it, in every mode of the first pass."""
  config = load_config(
    "digits",
    optimizer="sam",
    rho_schedule="start_jump",
    dataset="synthetic",
    validation_fraction=0.0,
    batch_size=16,
    model_kwargs={"width": 4},
    num_train_steps=4,
    **mode,
  )
  config.synthetic = {"image_shape": (8, 8, 1), "num_classes": 10, "num_train": 48, "num_test": 16}
  s = setup.build(config, create_mesh() if "sam_group_size" in mode else create_mesh(jax.devices()[:1]))
  args = (s.abstract_state, *s.empty_metrics(), s.global_batch(next(s.train_batches(seed=0))), s.dropout_rng)

  def convolutions(variant):
    jaxpr = jax.make_jaxpr(s.train_steps[variant])(*args)
    return sum(e.primitive.name == "conv_general_dilated" for e in iter_eqns(jaxpr.jaxpr))

  assert 0 < convolutions(False) < convolutions(True)


@pytest.mark.slow
def test_msam_runs_on_digits_with_sharpness_probes(tmp_path, one_device_mesh):
  """train_and_evaluate end to end (one optimizer per family runs it on mock CIFAR-100 below)."""
  config = load_config(
    "digits",
    num_train_steps=4,
    log_every_steps=2,
    bn_recompute_batches=2,
    rho=0.05,
    sharpness_every_steps=2,
    sharpness_num_iters=3,
  )
  results = training.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  assert results["steps"] == 4
  assert np.isfinite(results["final_eval_loss"])
  assert results["final_sam_sharpness"] > 0 and results["final_hessian_max_eigenvalue"] > 0
  _, state = final_checkpoint(str(tmp_path))
  assert all(np.isfinite(a).all() for a in tree_arrays(state["params"]))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,learning_rate", [("lion_msam", 1e-3), ("rst", 0.1)])
def test_optimizers_beyond_the_paper_train_on_digits(tmp_path, one_device_mesh, optimizer, learning_rate):
  """Lion-MSAM (msam_of around optax.lion) and RST through train_and_evaluate on digits (issue 22)."""
  config = load_config(
    "digits", optimizer=optimizer, learning_rate=learning_rate, rho=0.05, num_train_steps=6, log_every_steps=3
  )
  results = training.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  assert results["optimizer"] == optimizer and results["steps"] == 6
  assert np.isfinite(results["final_eval_loss"]) and results["final_eval_loss"] < np.log(10)  # it learns
  assert ("eval_accuracy_before_bn_recompute" in results) == (optimizer == "lion_msam")  # only MSAM perturbs


# The CIFAR-100 pipeline and WRN end to end with the first registered optimizer of each
# family (sgd, msam, sam); every optimizer runs the loop's steps above.
FAMILY_REPRESENTATIVES = [
  next(name for name in registry.names() if registry.get(name).family == family) for family in registry.FAMILIES
]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", FAMILY_REPRESENTATIVES)
def test_each_family_runs_on_mock_cifar100_tiny_wrn(tmp_path, one_device_mesh, mock_tfds, optimizer):
  config = load_config(
    "cifar100_wrn16_4",
    optimizer=optimizer,
    num_train_steps=2,
    batch_size=16,
    eval_batch_size=32,
    log_every_steps=1,
    bn_recompute_batches=1,
    async_checkpointing=False,
    model_kwargs={"depth": 10, "width": 1},
    label_noise=0.4,  # the noise and the validation subset on TFDS-read data (64 mock examples)
    validation_fraction=0.25,
  )
  results = training.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  assert results["steps"] == 2 and np.isfinite(results["final_eval_loss"])
  assert np.isfinite(results["final_validation_loss"]) and np.isfinite(results["final_noisy_train_loss"])
  assert results["label_noise"] == 0.4 and 0.1 < results["label_noise_realised_fraction"] < 0.7  # of 48


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,tiny_model",
  [
    ("imagenet_resnet50", {"depth": 18}),
    ("imagenet_vit", {"size": "Ti", "depth": 1, "patch_size": 16, "image_size": 32}),
  ],
)
def test_imagenet_configs_run_two_steps_on_mock_data(tmp_path, one_device_mesh, mock_tfds, name, tiny_model):
  config = load_config(
    name,
    num_train_steps=2,
    batch_size=8,
    eval_batch_size=8,
    image_size=32,
    log_every_steps=1,
    async_checkpointing=False,
    model_kwargs=tiny_model,
  )
  results = training.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  assert results["steps"] == 2 and np.isfinite(results["final_eval_loss"])
  assert "final_eval_accuracy_top5" in results


def test_train_split_evaluation_needs_an_in_memory_dataset():
  config = load_config("digits", dataset="synthetic", eval_train_split=True)
  with pytest.raises(training.ConfigError, match="config.eval_train_split=True is available for digits, cifar10"):
    training.validate(config, num_devices=1)
  noisy = load_config("digits", dataset="synthetic", label_noise=0.3)
  training.validate(noisy, num_devices=1)  # noise is fine; the training split is then not evaluated


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")))
def test_every_config_runs_on_synthetic_data(name, one_device_mesh):
  """`--config.dataset=synthetic` on any shipped config: its validation split and image size carry over."""
  config = load_config(name, dataset="synthetic")
  s = setup.build(config, one_device_mesh)  # validates; compiles nothing
  size = config.image_size or 32
  assert s.info.image_shape == (size, size, 3)
  assert s.info.num_validation == round(config.validation_fraction * 50_000)


@pytest.mark.slow
def test_digits_config_on_synthetic_data_evaluates_its_validation_split(tmp_path, one_device_mesh):
  config = load_config(
    "digits",
    dataset="synthetic",
    num_train_steps=2,
    eval_every_epochs=1,
    bn_recompute_batches=1,
    **{"synthetic.num_train": 640, "synthetic.num_test": 64},
  )
  results = training.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  assert results["steps"] == 2
  assert np.isfinite(results["final_validation_loss"]) and 0 <= results["final_validation_accuracy"] <= 1
  assert results["best_step"] == 2  # the best model is kept on the synthetic validation split


@pytest.mark.slow
def test_one_device_and_eight_devices_agree(tmp_path):
  config = load_config("digits", num_train_steps=6, log_every_steps=3, bn_recompute_batches=0)
  training.train_and_evaluate(config, str(tmp_path / "one"), mesh=create_mesh(jax.devices()[:1]))
  training.train_and_evaluate(config, str(tmp_path / "eight"), mesh=create_mesh(jax.devices()[:8]))
  _, one = final_checkpoint(str(tmp_path / "one"))
  _, eight = final_checkpoint(str(tmp_path / "eight"))
  for a, b in zip(tree_arrays(one), tree_arrays(eight)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize(
  "field,value,expected",
  [
    ("optimizer", "adam", "config.optimizer='adam' is not valid; choose one of sgd, msam"),
    ("model", "mlp", "config.model='mlp' is not valid"),
    ("dataset", "mnist", "config.dataset='mnist' is not valid"),
    ("batch_size", 60, "config.batch_size=60 is not divisible by the 8 devices"),
    ("rho", -1.0, "config.rho=-1.0 must be >= 0"),
    ("label_noise", 1.0, "config.label_noise=1.0 must be in [0, 1)."),
    ("label_noise", -0.1, "config.label_noise=-0.1 must be in [0, 1)."),
    ("label_noise_seed", -1, "config.label_noise_seed=-1 must be >= 0."),
    ("validation_fraction", 1.0, "config.validation_fraction=1.0 must be in [0, 1)."),
    ("validation_fraction", 0.99, "config.dataset='digits': global_batch_size=64 exceeds the 14 training examples"),
    ("best_model_metric", "accuracy", "config.best_model_metric='accuracy' names the test split; the best model is"),
    ("best_model_metric", "loss", "config.best_model_metric='loss' names the test split"),
    ("best_model_metric", "noisy_train_accuracy", "names no validation metric; the best model is chosen on validation"),
  ],
)
def test_bad_config_fails_before_compiling(tmp_path, field, value, expected, monkeypatch):
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before validating"))
  with pytest.raises(training.ConfigError, match=re.escape(expected)):
    training.train_and_evaluate(
      load_config("digits", **{field: value}), str(tmp_path), mesh=create_mesh(jax.devices()[:8])
    )


def test_the_best_model_needs_a_validation_split_unless_the_metric_is_the_default():
  """The default metric without a validation split is simply off; another one is refused in one line."""
  config = load_config("digits", validation_fraction=0.0)
  training.validate_fields(config)
  assert config_lib.best_model_metric(config) == ""
  assert config_lib.best_model_metric(load_config("digits")) == "validation_accuracy"
  assert config_lib.best_model_metric(load_config("digits", best_model_metric="")) == ""
  with pytest.raises(training.ConfigError) as info:
    training.validate_fields(load_config("digits", validation_fraction=0.0, best_model_metric="validation_loss"))
  assert str(info.value) == (
    "config.best_model_metric='validation_loss' needs a validation split; set --config.validation_fraction"
    " (e.g. 0.1) or --config.best_model_metric=''."
  )
