"""benchmarks/compare_optimizers.py: input checks, the summary arithmetic, and one tiny end-to-end run."""

import importlib.util
import json
import os

import pytest

from helpers import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "compare_optimizers.py")
PNGS = ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "sharpness.png")


@pytest.fixture(scope="module")
def compare():
  spec = importlib.util.spec_from_file_location("compare_optimizers", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _record(optimizer, seed, step_time, accuracy=0.9, sharpness=0.01, epochs=3):
  """A run record shaped like `train_one`'s, with made-up numbers."""
  history = [
    {
      "epoch": e,
      "step": 10 * e,
      "seconds": 1.0 + e * 10 * step_time,
      "training_seconds": 1.0 + e * 10 * step_time,
      "accuracy": accuracy - 0.1 / e,
      "loss": 0.5 / e,
    }
    for e in range(1, epochs + 1)
  ]
  return {
    "optimizer": optimizer,
    "seed": seed,
    "rho": 0.3 if optimizer != "sgd" else None,
    "learning_rate": 0.1,
    "weight_decay": 5e-4,
    "final_eval_accuracy": accuracy,
    "final_eval_loss": 0.1,
    "final_train_loss": 0.2,
    "final_sam_sharpness": sharpness,
    "final_hessian_max_eigenvalue": 10 * sharpness,
    "training_seconds": history[-1]["training_seconds"],
    "train_seconds": 20.0,
    "seconds_per_step": step_time,
    "seconds_per_step_excluding_compilation": step_time,
    "eval_history": history,
  }


def test_parse_overrides(compare):
  assert compare.parse_overrides("msam=0.3, sam=5e-2,", "--rho") == {"msam": 0.3, "sam": 0.05}
  assert compare.parse_overrides("", "--rho") == {}
  for bad in ("nosuch=1", "msam", "msam=abc", "msam=-1"):
    with pytest.raises(ValueError, match="--rho"):
      compare.parse_overrides(bad, "--rho")


def test_parse_lists(compare):
  assert compare.parse_list("sgd, msam", "--optimizers", compare.OPTIMIZERS) == ["sgd", "msam"]
  assert compare.parse_seeds("2,0") == [2, 0]
  with pytest.raises(ValueError, match="choose from sgd, msam"):
    compare.parse_list("sgd,nosuch", "--optimizers", compare.OPTIMIZERS)
  for bad in ("", "sgd,sgd"):
    with pytest.raises(ValueError, match="--optimizers"):
      compare.parse_list(bad, "--optimizers", compare.OPTIMIZERS)
  for bad in ("a", "-1", "1.5"):
    with pytest.raises(ValueError, match="--seeds"):
      compare.parse_seeds(bad)


def test_bad_command_line_exits_with_the_reason(compare, capsys):
  with pytest.raises(SystemExit):
    compare.parse_args(["--rho", "msam=x"])
  assert "--rho" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.parse_args(["--config", "/no/such/config.py"])
  assert "--config" in capsys.readouterr().err


def test_steady_step_time_leaves_out_first_and_last_epoch(compare):
  history = [
    {"step": 10, "seconds": 50.0},  # compilation
    {"step": 20, "seconds": 51.0},  # 0.1 s/step
    {"step": 30, "seconds": 53.0},  # 0.2 s/step
    {"step": 40, "seconds": 54.0},  # 0.1 s/step
    {"step": 50, "seconds": 90.0},
  ]  # final probes
  assert compare.steady_seconds_per_step(history) == pytest.approx(0.1)
  assert compare.steady_seconds_per_step(history[:2]) is None
  assert compare.training_seconds(history, 0.1) == pytest.approx([50, 51, 53, 54, 55])


def test_time_ratio_is_taken_within_a_seed(compare):
  runs = [
    _record("sgd", 0, 0.010),
    _record("msam", 0, 0.011),
    _record("sam", 0, 0.020),
    _record("sgd", 1, 0.020),
    _record("msam", 1, 0.021),
    _record("sam", 1, 0.040),
    _record("adamw_msam", 0, 0.010),
  ]
  compare.add_time_ratios(runs)
  ratios = {(r["optimizer"], r["seed"]): r["time_per_step_vs_base"] for r in runs}
  assert ratios[("sgd", 0)] == pytest.approx(1.0)
  assert ratios[("msam", 0)] == pytest.approx(1.1)
  assert ratios[("msam", 1)] == pytest.approx(1.05)
  assert ratios[("sam", 1)] == pytest.approx(2.0)
  assert ratios[("adamw_msam", 0)] is None  # adamw was not run
  summary = compare.summarize(runs, ["sgd", "msam", "sam", "adamw_msam"])
  assert summary["sam"]["time_per_step_vs_base"]["mean"] == pytest.approx(2.0)
  assert summary["msam"]["time_per_step_vs_base"]["std"] == pytest.approx(0.0353553, rel=1e-5)
  table = compare.markdown_table(summary, runs)
  assert "| sam | 0.3 | 90.00 ± 0.00 |" in table
  assert "2.00 ± 0.00 × sgd" in table
  assert "n/a (adamw not run)" in table
  assert len({line.count("|") for line in table.strip().splitlines()}) == 1


def test_report_from_records(compare, tmp_path):
  runs = [
    _record(name, seed, 0.01 * (1 + i), accuracy=0.9 + 0.01 * seed, sharpness=0.01 * (i + 1))
    for seed in (0, 1)
    for i, name in enumerate(("sgd", "msam", "adamw"))
  ]
  payload = {
    "runs": runs,
    "optimizers": ["sgd", "msam", "adamw"],
    "seeds": [0, 1],
    "config_name": "digits.py",
    "epochs": 3,
    "sharpness_rho": 0.05,
    "environment": {"device": "cpu", "platform": "cpu", "cpu_count": 2, "jax": "0"},
    "load_average_start": (1.0, 1.0, 1.0),
  }
  compare.write_report(str(tmp_path), payload, dpi=40)
  _check_outputs(tmp_path, ["sgd", "msam", "adamw"], num_runs=6)
  notes = (tmp_path / "table.md").read_text()
  assert "sgd, msam, adamw: 0.1 / 0.0005" in notes and "rho = 0.05" in notes
  curves = compare.mean_curves(runs, ["sgd"])
  assert curves["sgd"]["accuracy"][-1] == pytest.approx(100 * (0.905 - 0.1 / 3))
  assert curves["sgd"]["accuracy_std"][-1] == pytest.approx(0.7071068, rel=1e-5)


def _check_outputs(out, optimizers, num_runs, probes=True):
  for png in PNGS:
    with open(out / png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
  table = (out / "table.md").read_text()
  for name in optimizers:
    assert f"| {name} |" in table
  results = json.loads((out / "results.json").read_text())
  assert len(results["runs"]) == num_runs
  assert set(results["summary"]) == set(optimizers)
  probe_keys = ("final_sam_sharpness", "final_hessian_max_eigenvalue")
  for run in results["runs"]:
    for key in (
      "optimizer",
      "seed",
      "final_eval_accuracy",
      "final_train_loss",
      "training_seconds",
      "seconds_per_step",
      "time_per_step_vs_base",
      "eval_history",
    ) + probe_keys * probes:
      assert run[key] is not None, key
    if not probes:
      assert not set(probe_keys) & set(run)
  for stats in results["summary"].values():
    assert stats["final_sam_sharpness"]["n"] == (len(results["seeds"]) if probes else 0)
  return results


def test_reads_the_names_the_sharpness_probes_write(compare):
  """The loop stores `final_<key>` for each key of `sharpness_metrics`; the script reads those."""
  import jax
  import jax.numpy as jnp
  from msam_jax import analysis

  metrics = analysis.sharpness_metrics(
    lambda p: 0.5 * jnp.sum(p * p), jnp.ones(3), jax.random.key(0), rho=0.1, num_iters=2
  )
  assert {f"final_{k}" for k in metrics} <= set(compare.RUN_FIELDS)


@pytest.mark.slow
def test_end_to_end_two_optimizers(compare, tmp_path, capsys):
  """Real training, a few steps; the probes are left out (their compilation takes longer than
  both runs), the probe names are checked above and the probes themselves in tests/analysis."""
  results = compare.main(
    ["--optimizers", "sgd,msam", "--seeds", "0", "--steps", "3", "--no_sharpness", "--out", str(tmp_path)]
  )
  results = _check_outputs(tmp_path, ["sgd", "msam"], num_runs=2, probes=False)
  by_name = {r["optimizer"]: r for r in results["runs"]}
  assert by_name["msam"]["rho"] == 0.3 and by_name["sgd"]["rho"] is None
  assert by_name["sgd"]["time_per_step_vs_base"] == 1.0
  for run in results["runs"]:
    assert run["eval_history"][-1]["step"] == 3 and 0.0 <= run["final_eval_accuracy"] <= 1.0
    assert run["training_seconds"] > 0 and run["seconds_per_step"] > 0
  assert "| n/a | n/a |" in (tmp_path / "table.md").read_text()
  out = capsys.readouterr().out
  assert "[1/2] sgd seed 0" in out and "[2/2] msam seed 0" in out
