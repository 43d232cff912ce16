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


def _record(optimizer, seed, step_time, accuracy=0.9, sharpness=0.01, epochs=3, noise=None):
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
    **({} if noise is None else {"label_noise": noise, "final_noisy_train_accuracy": 1 - noise / 2}),
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


def _check_outputs(out, optimizers, num_runs, probes=True, pngs=PNGS):
  for png in pngs:
    with open(out / png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
  table = (out / "table.md").read_text()
  for name in optimizers:
    assert f"| {name} |" in table
  results = json.loads((out / "results.json").read_text())
  assert len(results["runs"]) == num_runs
  for level_summary in results["summary"].values():  # noise level -> optimizer -> metric
    assert set(level_summary) == set(optimizers)
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
  for level_summary in results["summary"].values():
    for stats in level_summary.values():
      assert stats["final_sam_sharpness"]["n"] == (len(results["seeds"]) if probes else 0)
  return results


def test_swept_gsam_keeps_rho_min_at_a_fifth_of_rho_max(compare):
  module = compare.load_config_module(compare.DEFAULT_CONFIG)
  for rho in (0.01, 0.1, 1.0):
    config = compare.run_config(module, "gsam", 0, rho=rho, sharpness=False)
    assert config.gsam_rho_min == pytest.approx(rho / 5)
  assert compare.run_config(module, "gsam", 0, sharpness=False).gsam_rho_min == 0.02  # the config's rho: untouched


def test_mesa_entry_runs_sgd_with_mesa_and_pairs_with_sgd(compare):
  module = compare.load_config_module(compare.DEFAULT_CONFIG)
  config = compare.run_config(module, "sgd+mesa", 0, sharpness=False, validation_fraction=0.1)
  steps = compare._steps_per_epoch(config)
  assert config.optimizer == "sgd" and config.mesa_weight == 0.3 and compare.comparison_name(config) == "sgd+mesa"
  assert config.mesa_decay == pytest.approx(1 - 1 / steps)  # time constant: one epoch
  plain = compare.run_config(module, "sgd", 0, sharpness=False)
  assert plain.mesa_weight == 0 and compare.comparison_name(plain) == "sgd"
  assert compare.BASE_OPTIMIZER["sgd+mesa"] == "sgd" and "sgd+mesa" not in compare.USES_RHO
  args = compare.parse_args(["--optimizers", "sgd,sgd+mesa"])
  assert compare.sweep_grid("sgd+mesa", args, 0.1) == [{}]  # nothing to sweep
  runs = [_record(o, seed, 0.01, accuracy=a, noise=0.4) for o, seed, a in (("sgd", 0, 0.5), ("sgd+mesa", 0, 0.6))]
  assert compare.paired_differences(runs, ["sgd", "sgd+mesa"])["0.4"]["sgd+mesa"]["mean"] == pytest.approx(0.1)


def test_lion_family_learning_rate_is_a_tenth_of_adamws(compare):
  lr = compare.parse_overrides(compare.DEFAULT_LR, "--lr")
  assert lr["lion"] == lr["lion_msam"] == pytest.approx(lr["adamw"] / 10)
  args = compare.parse_args(["--lr_factors", "0.3,1,3"])
  assert compare.sweep_grid("lion", args, lr["lion"]) == [
    {"learning_rate": pytest.approx(v)} for v in (9e-5, 3e-4, 9e-4)
  ]


def test_t_interval_against_a_hand_computation(compare):
  # mean 0.01, sample std 0.02, t(0.975, 2 dof) = 4.302653: half width 4.302653 * 0.02 / sqrt(3) = 0.0496827.
  got = compare.t_interval([0.01, 0.03, -0.01])
  assert got["mean"] == pytest.approx(0.01) and got["std"] == pytest.approx(0.02) and got["n"] == 3
  assert got["low"] == pytest.approx(0.01 - 0.0496827, abs=1e-6)
  assert got["high"] == pytest.approx(0.01 + 0.0496827, abs=1e-6)
  # Five seeds: t(0.975, 4) = 2.776445.
  d = [0.02, 0.0, 0.01, 0.03, 0.04]
  half = 2.776445 * 0.0158114 / 5**0.5
  assert compare.t_interval(d)["low"] == pytest.approx(0.02 - half, abs=1e-6)
  one = compare.t_interval([0.5])
  assert one["mean"] == 0.5 and one["low"] is None


def test_paired_differences_pair_seed_and_noise_level(compare):
  accuracy = {  # (optimizer, seed, noise) -> test accuracy
    ("sgd", 0, 0.0): 0.90,
    ("sgd", 1, 0.0): 0.80,
    ("msam", 0, 0.0): 0.92,
    ("msam", 1, 0.0): 0.81,
    ("sgd", 0, 0.4): 0.50,
    ("sgd", 1, 0.4): 0.60,
    ("msam", 0, 0.4): 0.70,
    ("msam", 1, 0.4): 0.70,
    ("msam", 2, 0.4): 0.99,  # sgd did not run seed 2: left out
    ("sam", 0, 0.4): 0.55,
  }
  runs = [_record(o, seed, 0.01, accuracy=a, noise=n) for (o, seed, n), a in accuracy.items()]
  paired = compare.paired_differences(runs, ["sgd", "msam", "sam"])
  assert set(paired) == {"0", "0.4"} and "sgd" not in paired["0"]
  clean, noisy = paired["0"]["msam"], paired["0.4"]["msam"]
  assert clean["values"] == pytest.approx([0.02, 0.01]) and clean["seeds"] == [0, 1]
  assert noisy["values"] == pytest.approx([0.2, 0.1]) and noisy["mean"] == pytest.approx(0.15)
  # Two seeds: t(0.975, 1) = 12.706205, std 0.0707107: half width 0.6353102.
  assert noisy["high"] == pytest.approx(0.15 + 0.6353102, abs=1e-6)
  assert paired["0.4"]["sam"]["n"] == 1 and paired["0.4"]["sam"]["low"] is None
  assert compare._difference_cell(paired["0.4"], "msam") == "+15.00 [-48.53, +78.53]"
  assert compare._difference_cell(paired["0.4"], "sgd") == "– (base)"
  assert compare._difference_cell(paired["0.4"], "sam") == "+5.00 (one seed)"


def test_sweep_grids_and_the_choice_on_validation(compare):
  args = compare.parse_args(["--msam_rho_grid", "0.3,3", "--sam_rho_grid", "0.01,0.1", "--lr_factors", "0.5,2"])
  assert compare.sweep_grid("sgd", args, 0.1) == [{}]
  assert compare.sweep_grid("msam", args, 0.1) == [{"rho": 0.3}, {"rho": 3.0}]
  assert compare.sweep_grid("sam", args, 0.1) == [{"rho": 0.01}, {"rho": 0.1}]
  assert compare.sweep_grid("adamw", args, 3e-3) == [{"learning_rate": 1.5e-3}, {"learning_rate": 6e-3}]
  assert len(compare.sweep_grid("adamw_msam", args, 3e-3)) == 4
  records = [
    {"point": {"rho": r}, "final_validation_accuracy": a, "final_validation_loss": loss, "final_eval_accuracy": 1.0}
    for r, a, loss in ((0.3, 0.9, 0.3), (1.0, 0.95, 0.4), (3.0, 0.95, 0.2), (10.0, 0.95, 0.2))
  ]
  # Best validation accuracy, ties to the lower validation loss, then the earlier point; the test
  # accuracy plays no part.
  assert compare.best_point(records) == {"rho": 3.0, "validation_accuracy": 0.95, "validation_loss": 0.2}
  assert args.sweep_noise == 0.2 and args.seeds == [0, 1, 2, 3, 4] and args.label_noise == [0.0, 0.2, 0.4]


@pytest.mark.parametrize(
  "argv, flag",
  [
    (["--label_noise", "0,1"], "--label_noise"),
    (["--label_noise", "x"], "--label_noise"),
    (["--msam_rho_grid", "0,1"], "--msam_rho_grid"),
    (["--validation_fraction", "0"], "--validation_fraction > 0 or --no_sweep"),
    (["--sweep_seed", "3"], "--sweep_seed=3 is one of --seeds"),
  ],
)
def test_bad_noise_and_sweep_flags_exit_with_the_reason(compare, capsys, argv, flag):
  with pytest.raises(SystemExit):
    compare.parse_args(argv)
  assert flag in capsys.readouterr().err


def test_report_over_noise_levels(compare, tmp_path):
  runs = [
    _record(name, seed, 0.01, accuracy=0.9 - noise / 2 + 0.01 * seed + 0.02 * i, noise=noise)
    for noise in (0.0, 0.4)
    for seed in (0, 1)
    for i, name in enumerate(("sgd", "msam"))
  ]
  payload = {
    "runs": runs,
    "optimizers": ["sgd", "msam"],
    "seeds": [0, 1],
    "config_name": "digits.py",
    "epochs": 3,
    "sharpness_rho": 0.05,
    "label_noise_seed": 0,
    "validation_fraction": 0.1,
    "sweep": {
      "seed": 100,
      "label_noise": 0.4,
      "msam_rho_grid": [0.3, 3],
      "sam_rho_grid": [0.01],
      "lr_factors": [1],
      "chosen": {"msam": {"rho": 3.0, "validation_accuracy": 0.5, "validation_loss": 1.0}},
    },
    "environment": {"device": "cpu", "platform": "cpu", "cpu_count": 2, "jax": "0"},
    "load_average_start": (1.0, 1.0, 1.0),
  }
  compare.write_report(str(tmp_path), payload, dpi=40)
  for name in ("accuracy_vs_noise.png", "accuracy_vs_epoch_noise0.4.png", "sharpness_noise0.png"):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
  table = (tmp_path / "table.md").read_text()
  assert "### Label noise 0.4" in table and "| msam | 0.3 | 72.50 ± 0.71 | +2.00 [+2.00, +2.00] |" in table
  assert "msam: rho 3 (validation accuracy 50.00 %)" in table and "seed 100 (not reported)" in table
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["paired_vs_base"]["0.4"]["msam"]["mean"] == pytest.approx(0.02)
  assert results["summary"]["0.4"]["msam"]["final_noisy_train_accuracy"]["mean"] == pytest.approx(0.8)


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
def test_end_to_end_with_label_noise_and_a_sweep(compare, tmp_path, capsys):
  """Real training, a few steps: a two-point rho sweep on validation data at noise 0.4, then both
  optimizers at noise 0 and 0.4. The probes are left out (their compilation takes longer than
  the runs), the probe names are checked above and the probes themselves in tests/analysis."""
  argv = ["--optimizers", "sgd,msam", "--seeds", "0", "--label_noise", "0,0.4", "--sweep_noise", "0.4"]
  argv += ["--msam_rho_grid", "0.3,3", "--steps", "3", "--no_sharpness", "--out", str(tmp_path)]
  compare.main(argv + ["--compilation_cache", str(tmp_path / "cache")])
  pngs = ["accuracy_vs_noise.png"] + [p.replace(".png", f"_noise{n}.png") for p in PNGS for n in ("0", "0.4")]
  results = _check_outputs(tmp_path, ["sgd", "msam"], num_runs=4, probes=False, pngs=pngs)
  sweep = results["sweep"]
  assert [r["point"] for r in sweep["runs"]] == [{"rho": 0.3}, {"rho": 3.0}]
  assert all(r["seed"] == 100 and r["label_noise"] == 0.4 for r in sweep["runs"])
  assert sweep["chosen"]["msam"] == compare.best_point(sweep["runs"]) and "sgd" not in sweep["chosen"]
  by_name = {(r["optimizer"], r["label_noise"]): r for r in results["runs"]}
  assert by_name[("msam", 0.4)]["rho"] == sweep["chosen"]["msam"]["rho"] and by_name[("sgd", 0.0)]["rho"] is None
  assert by_name[("sgd", 0.4)]["time_per_step_vs_base"] == 1.0
  assert by_name[("sgd", 0.0)]["label_noise_realised_fraction"] == 0.0
  assert abs(by_name[("sgd", 0.4)]["label_noise_realised_fraction"] - 0.4) < 0.06  # 1293 examples
  for run in results["runs"]:
    assert run["eval_history"][-1]["step"] == 3 and 0.0 <= run["final_eval_accuracy"] <= 1.0
    assert 0.0 <= run["final_validation_accuracy"] <= 1.0 and 0.0 <= run["final_noisy_train_accuracy"] <= 1.0
    assert run["training_seconds"] > 0 and run["seconds_per_step"] > 0
  assert results["paired_vs_base"]["0.4"]["msam"]["n"] == 1
  assert "| n/a | n/a |" in (tmp_path / "table.md").read_text()
  out = capsys.readouterr().out
  assert "[comparison 1/4] sgd seed 0 noise 0" in out and "[comparison 4/4] msam seed 0 noise 0.4" in out
  compare.main(["--report_only", "--out", str(tmp_path)])  # redraws from results.json alone
  assert (tmp_path / "table.md").read_text().count("### Label noise") == 2
