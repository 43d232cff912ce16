"""A run's life in its workdir: rerun when finished, resume with another config, damaged
checkpoints, the saved evaluated model, and workdirs on a non-local file system."""

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath

from msam_jax import training
from msam_jax.training import config as config_lib
from msam_jax.training import evaluated_model, loop, run_record, setup, steps
from msam_jax.training.train_state import TrainState

from helpers import REPO, assert_trees_equal, final_checkpoint, load_config, tree_arrays

SHORT = {
  "num_train_steps": 6,
  "log_every_steps": 2,
  "checkpoint_every_steps": 2,
  "max_checkpoints_to_keep": 5,
  "bn_recompute_batches": 2,
  "async_checkpointing": False,
  # Noisy labels and a validation subset, so resume, rerun and the saved model cover them too.
  "label_noise": 0.4,
  "validation_fraction": 0.1,
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A short msam run on digits (batch-norm statistics recomputed), finished."""
  workdir = tmp_path_factory.mktemp("finished")
  from msam_jax.training.mesh import create_mesh

  results = training.train_and_evaluate(
    load_config("digits", **SHORT), str(workdir), mesh=create_mesh(jax.devices()[:1])
  )
  return workdir, results


def _snapshot(directory):
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(finished_run, one_device_mesh):
  workdir, results = finished_run
  before = _snapshot(workdir)
  again = training.train_and_evaluate(load_config("digits", **SHORT), str(workdir), mesh=one_device_mesh)
  assert again == results
  assert _snapshot(workdir) == before  # results.json byte-identical, no checkpoint or event file added
  assert [e["step"] for e in results["eval_history"]] == [6]
  # Clean test, validation and noisy-train metrics in the history and the results; the noise recorded.
  assert {"accuracy", "validation_accuracy", "validation_loss", "noisy_train_accuracy"} <= set(
    results["eval_history"][0]
  )
  assert (results["label_noise"], results["label_noise_seed"], results["validation_fraction"]) == (0.4, 0, 0.1)
  assert results["num_train_examples"] == 1293 and results["num_validation_examples"] == 144
  assert abs(results["label_noise_realised_fraction"] - 0.4) < 4.5 * (0.24 / 1293) ** 0.5


@pytest.mark.slow
def test_train_py_on_a_finished_run_reports_it_and_exits_0(finished_run):
  workdir, results = finished_run
  before = (workdir / "results.json").read_bytes()
  args = [f"--config.{k}={v}" for k, v in SHORT.items()]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "train.py"),
      "--config",
      os.path.join(REPO, "configs/digits.py"),
      "--workdir",
      str(workdir),
      *args,
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"final eval accuracy: {results['final_eval_accuracy']:.4f}" in proc.stdout
  assert (workdir / "results.json").read_bytes() == before


@pytest.mark.slow
def test_resuming_with_a_changed_field_names_it_and_leaves_checkpoints(finished_run, one_device_mesh):
  workdir, _ = finished_run
  before = _snapshot(workdir)
  with pytest.raises(training.RunMismatchError) as info:
    training.train_and_evaluate(
      load_config("digits", **SHORT, optimizer="sgd", rho=0.05), str(workdir), mesh=one_device_mesh
    )
  message = str(info.value)
  assert message.startswith(f"{workdir / 'config.json'} records other values of optimizer, ")
  assert "optimizer_kwargs.nesterov, rho;" in message and "docs/resuming.md" in message  # sgd's option too
  assert len(message) - len(str(workdir)) < 150 and "\n" not in message
  assert _snapshot(workdir) == before


def test_docs_list_exactly_the_fields_that_may_change_on_resume():
  table = [line for line in open(os.path.join(REPO, "docs", "resuming.md")) if line.startswith("| `")]
  listed = {name for line in table for name in re.findall(r"`(\w+)`", line.split(" | ")[0])}
  assert listed == set(config_lib.RESUMABLE_FIELDS)


def test_fields_that_may_change_on_resume_are_not_differences():
  recorded = run_record.config_record(training.resolve(load_config("digits")))
  current = run_record.config_record(
    training.resolve(
      load_config("digits", log_every_steps=7, num_train_steps=3, checkpoint_every_steps=5, data_dir="/elsewhere")
    )
  )
  assert run_record.differing_fields(recorded, current) == []
  changed = run_record.config_record(training.resolve(load_config("digits", num_epochs=31)))
  assert run_record.differing_fields(recorded, changed) == ["num_epochs"]


def _damage(checkpoint_dir):
  """Truncates every file, as a full disk leaves them."""
  for path in checkpoint_dir.rglob("*"):
    if path.is_file():
      path.write_bytes(b"")


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(
  finished_run, tmp_path, one_device_mesh, caplog
):
  workdir, _ = finished_run
  undamaged, damaged = tmp_path / "undamaged", tmp_path / "damaged"
  for copy in (undamaged, damaged):
    shutil.copytree(workdir, copy)
    for name in ("results.json", "evaluated_model"):
      p = copy / name
      shutil.rmtree(p) if p.is_dir() else p.unlink()
  shutil.rmtree(undamaged / "checkpoints" / "6")  # an undamaged resume from step 4
  _damage(damaged / "checkpoints" / "6")
  expected = training.train_and_evaluate(load_config("digits", **SHORT), str(undamaged), mesh=one_device_mesh)
  with caplog.at_level("WARNING"):
    got = training.train_and_evaluate(load_config("digits", **SHORT), str(damaged), mesh=one_device_mesh)
  assert any("step 6 cannot be read" in r.getMessage() for r in caplog.records)
  assert (damaged / "damaged_checkpoints" / "6").is_dir()  # kept, not deleted
  for key in ("final_eval_accuracy", "final_eval_loss", "final_param_norm", "eval_history"):
    if key == "eval_history":
      strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
      assert strip(got[key]) == strip(expected[key])
    else:
      assert got[key] == expected[key], key
  for a, b in zip(tree_arrays(final_checkpoint(str(damaged))[1]), tree_arrays(final_checkpoint(str(undamaged))[1])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_only_unreadable_checkpoints_is_an_error_not_a_fresh_start(finished_run, tmp_path, one_device_mesh):
  workdir, _ = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  (copy / "results.json").unlink()
  for step_dir in (copy / "checkpoints").iterdir():
    _damage(step_dir)
  with pytest.raises(training.CheckpointError, match="can be read"):
    training.train_and_evaluate(load_config("digits", **SHORT), str(copy), mesh=one_device_mesh)
  assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["2", "4", "6"]


@pytest.mark.slow
def test_the_saved_model_reproduces_the_reported_accuracy(finished_run, one_device_mesh):
  workdir, results = finished_run
  assert "eval_accuracy_before_bn_recompute" in results  # the recomputed statistics are the ones saved
  model, variables, config = training.load_for_eval(str(workdir))
  assert results["evaluated_model"] == str(workdir / evaluated_model.MODEL_DIR / "6")
  assert config.optimizer == "msam" and set(variables) == {"params", "batch_stats"}
  state = TrainState(step=np.int32(6), params=variables["params"], batch_stats=variables["batch_stats"], opt_state=())
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, label_smoothing=config.label_smoothing))
  s = dataclasses.replace(setup.build(config, one_device_mesh), eval_step=eval_fn)  # the loaded model's step
  metrics = loop.evaluate_all(s, state)  # test, validation and noisy-train splits
  assert metrics["accuracy"] == results["final_eval_accuracy"]
  assert metrics["loss"] == results["final_eval_loss"]
  assert metrics["validation_accuracy"] == results["final_validation_accuracy"]
  assert metrics["noisy_train_accuracy"] == results["final_noisy_train_accuracy"]


@pytest.mark.slow
def test_the_saved_best_model_is_the_evaluated_one_and_reproduces_its_accuracy(finished_run, one_device_mesh):
  """Here the last step's evaluation: an msam run, so its batch-norm statistics were recomputed at the
  unperturbed parameters for it, and it is the final evaluated model, bit for bit."""
  workdir, results = finished_run
  assert results["best_step"] == 6 and results["best_epoch"] == 6 / 20
  assert results["best_validation_accuracy"] == results["eval_history"][-1]["validation_accuracy"]
  assert results["best_model"] == str(workdir / evaluated_model.BEST_MODEL_DIR / "6")
  model, variables, config = training.load_for_eval(str(workdir), which="best")
  _, final_variables, _ = training.load_for_eval(str(workdir))  # the same step's model
  assert_trees_equal(variables, final_variables)
  running = final_checkpoint(str(workdir))[1]["batch_stats"]  # the training's, at perturbed parameters
  assert not all(np.array_equal(a, b) for a, b in zip(tree_arrays(variables["batch_stats"]), tree_arrays(running)))
  state = TrainState(step=np.int32(6), params=variables["params"], batch_stats=variables["batch_stats"], opt_state=())
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, label_smoothing=config.label_smoothing))
  s = dataclasses.replace(setup.build(config, one_device_mesh), eval_step=eval_fn)
  metrics = loop.evaluate_all(s, state)
  for split in ("eval_", "validation_", "noisy_train_"):
    key = split.replace("eval_", "")
    assert metrics[f"{key}accuracy"] == results[f"best_{split}accuracy"]
    # Float32 round-off: the run's evaluation computed the unperturbed parameters inside its step.
    np.testing.assert_allclose(metrics[f"{key}loss"], results[f"best_{split}loss"], rtol=1e-6)


def _entry(step, accuracy, loss):
  return {"step": step, "validation_accuracy": accuracy, "validation_loss": loss}


def _history(*rows):
  """Evaluations as (step, validation accuracy, validation loss) rows."""
  return [_entry(*row) for row in rows]


def test_the_best_evaluation_breaks_ties_on_the_other_validation_metric_then_on_the_earliest():
  history = _history((10, 0.5, 1.0), (20, 0.8, 0.7), (30, 0.8, 0.6), (40, 0.8, 0.6), (50, 0.7, 0.5))
  assert run_record.best_evaluation(history, "validation_accuracy")["step"] == 30
  assert run_record.best_evaluation(history, "validation_loss")["step"] == 50
  assert run_record.best_evaluation(history[:4], "validation_loss")["step"] == 30  # 0.6 twice: the earlier
  assert run_record.best_evaluation(_history((1, 0.5, 0.6), (2, 0.6, 0.6)), "validation_loss")["step"] == 2
  assert run_record.best_evaluation([], "validation_accuracy") is None


def test_best_models_are_kept_while_a_run_resumed_from_a_kept_checkpoint_could_report_them():
  """Best at 20, then at 40; checkpoints at 30 and 60: a run resumed from 30 has the history up to 30,
  whose best is 20 (40 is redone), so 20 stays until no checkpoint before 40 is left."""
  history = _history((10, 0.5, 1.0), (20, 0.7, 0.9), (30, 0.6, 0.9), (40, 0.8, 0.8), (50, 0.7, 0.8))
  assert run_record.best_steps_needed(history, [30, 60], "validation_accuracy") == {20, 40}
  assert run_record.best_steps_needed(history, [40, 60], "validation_accuracy") == {40}
  assert run_record.best_steps_needed(history, [5], "validation_accuracy") == {40}  # nothing evaluated by step 5
  assert run_record.best_steps_needed(history, [], "validation_loss") == {40}


def test_only_evaluations_whose_best_model_is_saved_can_be_the_best(tmp_path):
  """A run begun by a version that kept no best models saved none for its evaluations before the upgrade."""
  workdir = epath.Path(tmp_path)
  evaluated_model.save(workdir, 20, {"params": {"w": np.zeros(2, np.float32)}}, which="best")
  history = _history((10, 0.9, 0.1), (20, 0.5, 1.0), (30, 0.6, 0.9))
  assert evaluated_model.with_best_model(workdir, history) == [history[1]]
  assert evaluated_model.with_best_model(workdir / "elsewhere", history) == []


def test_load_for_eval_names_the_model_a_run_did_not_keep(tmp_path):
  run_record.record_config(tmp_path, training.resolve(load_config("digits", validation_fraction=0.0)))
  with pytest.raises(FileNotFoundError, match="kept no best model .* load the final model with which='final'"):
    training.load_for_eval(str(tmp_path), which="best")
  with pytest.raises(FileNotFoundError, match="holds no model; it is written when the run finishes"):
    training.load_for_eval(str(tmp_path))
  with pytest.raises(ValueError, match="which='last' is not a model a run keeps; choose 'final' or 'best'"):
    training.load_for_eval(str(tmp_path), which="last")


def test_image_size_is_one_field_shared_with_the_model():
  config = load_config("imagenet_vit")
  config.image_size = 160
  assert config.model_kwargs.image_size == 160
  assert training.resolve(config).model_kwargs.image_size == 160


def test_model_kwargs_hold_every_option_with_its_default():
  config = load_config("cifar100_wrn16_4")
  assert dict(config.model_kwargs) == {"depth": 16, "width": 4, "dropout": 0.0}
  training.set_model(config, "vit", depth=2)
  assert config.model_kwargs.depth == 2 and config.model_kwargs.size == "S"
  config.model_kwargs.heads = 3  # a None default is typed, so it can be set
  with pytest.raises(training.ConfigError, match="config.model_kwargs.foo is not an option of model 'cnn'"):
    training.set_model(config, "cnn", foo=1)


def test_a_non_local_workdir_goes_through_epath(tmp_path, monkeypatch):
  """gs:// paths, mapped onto a local directory by epath's test backend (no network)."""
  from etils.epath import gpath

  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else gs:// goes to tf.io.gfile
  root = "gs://bucket"
  local = lambda p: os.fspath(p).replace(root, str(tmp_path))

  def mapped(fn_name):
    def fn(original, path, *args, **kwargs):
      if fn_name in ("rename", "replace", "copy"):
        args = (local(args[0]), *args[1:])
      return original(local(path), *args, **kwargs)

    return fn

  names = (
    "open",
    "exists",
    "isdir",
    "listdir",
    "makedirs",
    "mkdir",
    "remove",
    "rename",
    "replace",
    "stat",
    "glob",
    "rmtree",
  )
  config = training.resolve(load_config("digits"))
  with epath.testing.mock_epath(**{n: mapped(n) for n in names}):
    workdir = run_record.check_workdir(f"{root}/runs/a")
    assert os.fspath(workdir) == f"{root}/runs/a"
    assert run_record.check_run(workdir, config, 10) is None
    run_record.record_config(workdir, config)
    run_record.save_history(workdir, [{"step": 5, "accuracy": 0.5}, {"step": 10, "accuracy": 0.7}])
    assert run_record.load_history(workdir, 7) == [{"step": 5, "accuracy": 0.5}]
    run_record.write_results(workdir, {"steps": 10})
    assert run_record.check_run(workdir, config, 10) == {"steps": 10}
    (epath.Path(root) / "afile").write_text("")
    with pytest.raises(training.WorkdirError, match="is under gs://bucket/afile, which is a file"):
      run_record.check_workdir(f"{root}/afile/run")
  assert (tmp_path / "runs" / "a" / "config.json").exists()


def test_a_local_workdir_expands_the_home_directory():
  assert run_record.as_path("~/runs/a") == epath.Path(os.path.expanduser("~/runs/a"))


@pytest.mark.slow
def test_stopping_before_the_latest_checkpoint_is_a_clear_error(finished_run, tmp_path, one_device_mesh):
  workdir, _ = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  with pytest.raises(training.ConfigError, match="already holds a checkpoint of step 6"):
    training.train_and_evaluate(
      load_config("digits", **{**SHORT, "num_train_steps": 4}), str(copy), mesh=one_device_mesh
    )
