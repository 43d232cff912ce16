"""benchmarks/compare: input checks, the summary arithmetic, and one tiny end-to-end run."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.compare import combine, configs, entries, flags, main, merge, plots, report
from benchmarks.compare import plan as plan_lib
from benchmarks.compare import runs as runs_lib
from benchmarks.compare import summary as summary_lib
from benchmarks.compare import sweep as sweep_lib
from benchmarks.compare import table as table_lib
from helpers import REPO

PNGS = ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "sharpness.png")


def _record(
  optimizer, seed, step_time, accuracy=0.9, sharpness=0.01, epochs=3, noise=None, best=None, chosen_by=None, lr=0.1
):
  """A run record shaped like `train_one`'s, with made-up numbers.

  `best`: the best-on-validation model's test accuracy (the loop's `best_*` keys), default `accuracy`.
  """
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
    "learning_rate": lr,
    "weight_decay": 5e-4,
    "final_eval_accuracy": accuracy,
    "final_validation_accuracy": accuracy - 0.01,
    "final_validation_loss": 0.3,
    "best_step": 10 * (epochs - 1),
    "best_epoch": epochs - 1,
    "best_validation_accuracy": accuracy,
    "best_validation_loss": 0.25,
    "best_eval_accuracy": accuracy if best is None else best,
    "best_eval_loss": 0.2,
    "best_noisy_train_accuracy": 0.5,
    "best_model": "best",
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
    **({} if chosen_by is None else {"chosen_by": chosen_by}),
  }


def test_parse_overrides():
  assert flags.parse_overrides("msam=0.3, sam=5e-2,", "--rho") == {"msam": 0.3, "sam": 0.05}
  assert flags.parse_overrides("", "--rho") == {}
  for bad in ("nosuch=1", "msam", "msam=abc", "msam=-1"):
    with pytest.raises(ValueError, match="--rho"):
      flags.parse_overrides(bad, "--rho")


def test_parse_lists():
  assert flags.parse_list("sgd, msam", "--optimizers", entries.OPTIMIZERS) == ["sgd", "msam"]
  assert flags.parse_seeds("2,0") == [2, 0]
  with pytest.raises(ValueError, match="choose from sgd, msam"):
    flags.parse_list("sgd,nosuch", "--optimizers", entries.OPTIMIZERS)
  for bad in ("", "sgd,sgd"):
    with pytest.raises(ValueError, match="--optimizers"):
      flags.parse_list(bad, "--optimizers", entries.OPTIMIZERS)
  for bad in ("a", "-1", "1.5"):
    with pytest.raises(ValueError, match="--seeds"):
      flags.parse_seeds(bad)


def test_bad_command_line_exits_with_the_reason(capsys):
  with pytest.raises(SystemExit):
    flags.parse_args(["--rho", "msam=x"])
  assert "--rho" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    flags.parse_args(["--config", "/no/such/config.py"])
  assert "--config" in capsys.readouterr().err


def test_steady_step_time_leaves_out_first_and_last_epoch():
  history = [
    {"step": 10, "seconds": 50.0},  # compilation
    {"step": 20, "seconds": 51.0},  # 0.1 s/step
    {"step": 30, "seconds": 53.0},  # 0.2 s/step
    {"step": 40, "seconds": 54.0},  # 0.1 s/step
    {"step": 50, "seconds": 90.0},
  ]  # final probes
  assert runs_lib.steady_seconds_per_step(history) == pytest.approx(0.1)
  assert runs_lib.steady_seconds_per_step(history[:2]) is None
  assert runs_lib.training_seconds(history, 0.1) == pytest.approx([50, 51, 53, 54, 55])


def test_time_ratio_is_taken_within_a_seed():
  runs = [
    _record("sgd", 0, 0.010),
    _record("msam", 0, 0.011),
    _record("sam", 0, 0.020),
    _record("sgd", 1, 0.020),
    _record("msam", 1, 0.021),
    _record("sam", 1, 0.040),
    _record("adamw_msam", 0, 0.010),
  ]
  summary_lib.add_time_ratios(runs)
  ratios = {(r["optimizer"], r["seed"]): r["time_per_step_vs_base"] for r in runs}
  assert ratios[("sgd", 0)] == pytest.approx(1.0)
  assert ratios[("msam", 0)] == pytest.approx(1.1)
  assert ratios[("msam", 1)] == pytest.approx(1.05)
  assert ratios[("sam", 1)] == pytest.approx(2.0)
  assert ratios[("adamw_msam", 0)] is None  # adamw was not run
  summary = summary_lib.summarize(runs, ["sgd", "msam", "sam", "adamw_msam"])
  assert summary["sam"]["time_per_step_vs_base"]["mean"] == pytest.approx(2.0)
  assert summary["msam"]["time_per_step_vs_base"]["std"] == pytest.approx(0.0353553, rel=1e-5)
  table = table_lib.markdown_table({"final": summary}, runs)  # records without chosen_by: the final column
  assert "| sam | lr 0.1, rho 0.3 | 90.00 ± 0.00 | n/a (sgd not run) | n/a |" in table
  assert "2.00 ± 0.00 × sgd" in table
  assert "n/a (adamw not run)" in table
  assert len({line.count("|") for line in table.strip().splitlines()}) == 1


def test_report_from_records(tmp_path):
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
  report.write_report(str(tmp_path), payload, dpi=40)
  _check_outputs(tmp_path, ["sgd", "msam", "adamw"], num_runs=6)
  notes = (tmp_path / "table.md").read_text()
  assert "Weight decay: sgd, msam, adamw: 0.0005." in notes and "top Hessian eigenvalue" in notes
  curves = plots.mean_curves(runs, ["sgd"])
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
  for level_summary in results["summary"].values():  # noise level -> column -> optimizer -> metric
    assert set(level_summary["final"]) == set(optimizers)
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
    for stats in level_summary["final"].values():
      assert stats["final_sam_sharpness"]["n"] == (len(results["seeds"]) if probes else 0)
  return results


def test_swept_gsam_keeps_rho_min_at_a_fifth_of_rho_max():
  get_config = flags.config_loader(flags.DEFAULT_CONFIG)
  for rho in (0.01, 0.1, 1.0):
    config = configs.run_config(get_config, "gsam", 0, rho=rho, sharpness=False)
    assert config.gsam_rho_min == pytest.approx(rho / 5)
  assert configs.run_config(get_config, "gsam", 0, sharpness=False).gsam_rho_min == 0.02  # the config's rho: untouched


def test_mesa_entry_runs_sgd_with_mesa_and_pairs_with_sgd():
  get_config = flags.config_loader(flags.DEFAULT_CONFIG)
  config = configs.run_config(get_config, "sgd+mesa", 0, sharpness=False, validation_fraction=0.1)
  steps = configs.steps_per_epoch(config)
  assert config.optimizer == "sgd" and config.mesa_weight == 0.3 and entries.comparison_name(config) == "sgd+mesa"
  assert config.mesa_decay == pytest.approx(1 - 1 / steps)  # time constant: one epoch
  plain = configs.run_config(get_config, "sgd", 0, sharpness=False)
  assert plain.mesa_weight == 0 and entries.comparison_name(plain) == "sgd"
  assert entries.BASE_OPTIMIZER["sgd+mesa"] == "sgd" and "sgd+mesa" not in entries.USES_RHO
  args = flags.parse_args(["--optimizers", "sgd,sgd+mesa"])
  assert sweep_lib.rho_grid("sgd+mesa", args) == []  # the learning rate only
  runs = [_record(o, seed, 0.01, accuracy=a, noise=0.4) for o, seed, a in (("sgd", 0, 0.5), ("sgd+mesa", 0, 0.6))]
  assert summary_lib.paired_differences(runs, ["sgd", "sgd+mesa"])["0.4"]["sgd+mesa"]["mean"] == pytest.approx(0.1)


def test_lion_family_learning_rate_is_a_tenth_of_adamws():
  lr = flags.parse_overrides(configs.DEFAULT_LR, "--lr")
  assert lr["lion"] == lr["lion_msam"] == pytest.approx(lr["adamw"] / 10)
  args = flags.parse_args(["--lr_factors", "0.3,1,3"])
  assert sweep_lib.lr_grid(args, lr["lion"]) == [pytest.approx(v) for v in (9e-5, 3e-4, 9e-4)]


def test_t_interval_against_a_hand_computation():
  # mean 0.01, sample std 0.02, t(0.975, 2 dof) = 4.302653: half width 4.302653 * 0.02 / sqrt(3) = 0.0496827.
  got = summary_lib.t_interval([0.01, 0.03, -0.01])
  assert got["mean"] == pytest.approx(0.01) and got["std"] == pytest.approx(0.02) and got["n"] == 3
  assert got["low"] == pytest.approx(0.01 - 0.0496827, abs=1e-6)
  assert got["high"] == pytest.approx(0.01 + 0.0496827, abs=1e-6)
  # Five seeds: t(0.975, 4) = 2.776445.
  d = [0.02, 0.0, 0.01, 0.03, 0.04]
  half = 2.776445 * 0.0158114 / 5**0.5
  assert summary_lib.t_interval(d)["low"] == pytest.approx(0.02 - half, abs=1e-6)
  one = summary_lib.t_interval([0.5])
  assert one["mean"] == 0.5 and one["low"] is None


def test_paired_differences_pair_seed_and_noise_level():
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
  paired = summary_lib.paired_differences(runs, ["sgd", "msam", "sam"])
  assert set(paired) == {"0", "0.4"} and "sgd" not in paired["0"]
  clean, noisy = paired["0"]["msam"], paired["0.4"]["msam"]
  assert clean["values"] == pytest.approx([0.02, 0.01]) and clean["seeds"] == [0, 1]
  assert noisy["values"] == pytest.approx([0.2, 0.1]) and noisy["mean"] == pytest.approx(0.15)
  # Two seeds: t(0.975, 1) = 12.706205, std 0.0707107: half width 0.6353102.
  assert noisy["high"] == pytest.approx(0.15 + 0.6353102, abs=1e-6)
  assert paired["0.4"]["sam"]["n"] == 1 and paired["0.4"]["sam"]["low"] is None
  assert table_lib._difference_cell(paired["0.4"], "msam") == "+15.00 [-48.53, +78.53]"
  assert table_lib._difference_cell(paired["0.4"], "sgd") == "– (base)"
  assert table_lib._difference_cell(paired["0.4"], "sam") == "+5.00 (one seed)"


def test_grids_span_the_issue_ranges():
  args = flags.parse_args([])
  assert sweep_lib.lr_grid(args, 0.1) == [pytest.approx(v) for v in (0.03, 0.1, 0.3)]  # SGD family: 10x around 0.1
  assert sweep_lib.rho_grid("msam", args) == [0.3, 1, 3, 10]
  for name in ("sam", "sam_late", "looksam", "adamw_sam"):
    assert sweep_lib.rho_grid(name, args) == [0.03, 0.1, 0.3, 1], name
  assert sweep_lib.rho_grid("adamw_msam", args) == sweep_lib.rho_grid("lion_msam", args) == [0.03, 0.1, 0.3, 1]
  for name in ("sgd", "adamw", "lion", "sgd+mesa"):
    assert sweep_lib.rho_grid(name, args) == [], name
  assert args.seeds == [0, 1, 2, 3, 4] and args.label_noise == [0.0, 0.2, 0.4] and args.eval_every_epochs == 1
  assert args.optimizers == list(entries.DEFAULT_OPTIMIZERS) and len(args.optimizers) == 11
  assert set(entries.DROPPED) == {"esam", "asam", "gsam", "rst", "adamw_asam", "adamw_gsam"}


def _sweep_record(point, final, final_loss, best, best_loss):
  return {
    "point": point,
    "final_validation_accuracy": final,
    "final_validation_loss": final_loss,
    "best_validation_accuracy": best,
    "best_validation_loss": best_loss,
    "final_eval_accuracy": 1.0,  # the test split plays no part
    "best_eval_accuracy": 1.0,
  }


def test_the_two_criteria_choose_on_validation():
  records = [
    _sweep_record({"rho": 0.3}, 0.90, 0.3, 0.97, 0.5),
    _sweep_record({"rho": 1.0}, 0.95, 0.4, 0.96, 0.1),
    _sweep_record({"rho": 3.0}, 0.95, 0.2, 0.97, 0.4),  # ties rho 1 finally (lower loss); rho 0.3 at best (lower)
    _sweep_record({"rho": 10.0}, 0.95, 0.2, 0.90, 0.1),  # ties rho 3 on both: the earlier point wins
  ]
  assert sweep_lib.choose(records, "final") == {"rho": 3.0, "validation_accuracy": 0.95, "validation_loss": 0.2}
  assert sweep_lib.choose(records, "early_stopped") == {"rho": 3.0, "validation_accuracy": 0.97, "validation_loss": 0.4}
  records[2]["best_validation_loss"] = 0.6  # now rho 0.3 has the lower loss at the tied best accuracy
  assert sweep_lib.choose(records, "early_stopped")["rho"] == 0.3


def _fake_sweep(scores):
  """A `run` for `tune` that records its calls and scores each point by `scores(point)` -> (final, best)."""
  calls = []

  def run(point, stage):
    calls.append((stage[0], point))
    final, best = scores(point)
    return _sweep_record(point, final, 0.1, best, 0.1)

  return run, calls


def test_staged_sweep_when_both_criteria_agree():
  run, calls = _fake_sweep(lambda p: (p.get("rho", 1) - abs(p["learning_rate"] - 0.3),) * 2)
  chosen = sweep_lib.tune([0.03, 0.1, 0.3], [0.3, 1.0, 3.0, 10.0], run, start_lr=0.1)
  assert calls == [("b", {"learning_rate": 0.1, "rho": r}) for r in (0.3, 1.0, 3.0, 10.0)] + [
    ("c", {"learning_rate": lr, "rho": 10.0}) for lr in (0.03, 0.3)
  ]
  assert (
    chosen["final"]
    == chosen["early_stopped"]
    == {
      "learning_rate": 0.3,
      "rho": 10.0,
      "validation_accuracy": 10.0,
      "validation_loss": 0.1,
    }
  )
  assert sweep_lib.reported_points(chosen) == [({"learning_rate": 0.3, "rho": 10.0}, ["final", "early_stopped"])]


def test_staged_sweep_when_the_criteria_differ():
  # Finally the smallest rho and learning rate win (less memorised); at the best epoch the largest.
  run, calls = _fake_sweep(lambda p: (-p["rho"] - p["learning_rate"], p["rho"] + p["learning_rate"]))
  chosen = sweep_lib.tune([0.03, 0.1, 0.3], [0.3, 1.0, 3.0, 10.0], run, start_lr=0.1)
  assert [c for c in calls if c[0] == "c"] == [  # stage (c) at each criterion's rho, the base's lr left out
    ("c", {"learning_rate": lr, "rho": rho}) for rho in (0.3, 10.0) for lr in (0.03, 0.3)
  ]
  assert len(calls) == 8
  assert {k: chosen["final"][k] for k in ("learning_rate", "rho")} == {"learning_rate": 0.03, "rho": 0.3}
  assert {k: chosen["early_stopped"][k] for k in ("learning_rate", "rho")} == {"learning_rate": 0.3, "rho": 10.0}
  assert sweep_lib.reported_points(chosen) == [
    ({"learning_rate": 0.03, "rho": 0.3}, ["final"]),
    ({"learning_rate": 0.3, "rho": 10.0}, ["early_stopped"]),
  ]
  # A base (no rho): stage (a), the learning rate alone.
  run, calls = _fake_sweep(lambda p: (-p["learning_rate"], p["learning_rate"]))
  chosen = sweep_lib.tune([0.03, 0.1, 0.3], [], run)
  assert calls == [("a", {"learning_rate": lr}) for lr in (0.03, 0.1, 0.3)]
  assert chosen["final"]["learning_rate"] == 0.03 and chosen["early_stopped"]["learning_rate"] == 0.3


def test_dry_run_lists_every_run_and_the_count(capsys):
  args = flags.parse_args([])
  tuned = sweep_lib.tuned_optimizers(args.optimizers)
  assert tuned[:3] == ["sgd", "adamw", "lion"]  # bases first: their choices start the variants' sweeps
  plan = plan_lib.planned_runs(args, tuned, 30)
  # Per noise level: sgd, adamw, lion and sgd+mesa 3 learning rates; 7 variants 4 rhos + 2 learning rates
  # (+2 when the criteria choose different rhos); 11 optimizers x 5 seeds (x2 when the choices differ).
  per_level_min, per_level_max = 4 * 3 + 7 * 6 + 55, 4 * 3 + 7 * 8 + 110
  assert plan_lib.estimate(plan)["runs_min"] == 3 * per_level_min == 327
  assert plan_lib.estimate(plan)["runs_max"] == 3 * per_level_max == 534
  assert plan[0][0] == "noise 0 sweep seed 100: sgd (a) lr 0.03" and plan[-1][2] is False
  probes = plan_lib.planned_runs(flags.parse_args(["--no_sharpness"]), tuned, 30)
  sweep = 4 * 3 + 7 * 8  # noise 0's sweep runs, the uncertain ones included
  assert [p[1] for p in probes[:sweep]] == [p[1] for p in plan[:sweep]]  # the sweep never probes
  assert plan[sweep][0] == "noise 0 seed 0: sgd at its final choice (and early-stopped, if the same)"
  assert plan[sweep][1] == probes[sweep][1] + plan_lib.PROBE_SECONDS  # reported runs probe unless --no_sharpness
  assert main.main(["--dry_run"]) is None
  out = capsys.readouterr().out
  assert " 534. noise 0.4 seed 4: sgd+mesa at its early-stopped choice, if it differs" in out
  assert "327 runs if every pair of choices agrees, 534 if all differ" in out
  # Part B of a split: sam_late alone brings sgd's sweep (its rho stage starts at sgd's choice), not its runs.
  part = flags.parse_args(["--optimizers", "sam_late", "--label_noise", "0.4"])
  assert sweep_lib.tuned_optimizers(part.optimizers) == ["sgd", "sam_late"]
  assert plan_lib.estimate(plan_lib.planned_runs(part, ["sgd", "sam_late"], 30))["runs_min"] == 3 + 6 + 5


def test_late_sam_is_sam_with_rho_from_80_percent_of_training():
  get_config = flags.config_loader(flags.DEFAULT_CONFIG)
  config = configs.run_config(get_config, "sam_late", 0, rho=0.1, sharpness=False)
  assert config.optimizer == "sam" and config.rho_schedule == "start_jump" and config.rho == 0.1
  assert config.rho_jump_epochs == pytest.approx(0.8 * config.num_epochs) == pytest.approx(24)
  assert entries.comparison_name(config) == "sam_late" and entries.BASE_OPTIMIZER["sam_late"] == "sgd"
  assert configs.run_config(get_config, "sam_late", 0, epochs=10, sharpness=False).rho_jump_epochs == pytest.approx(8)
  assert entries.comparison_name(configs.run_config(get_config, "sam", 0, sharpness=False)) == "sam"
  assert "sam_late" in entries.USES_RHO and plots.COLORS["sam_late"] not in (
    plots.COLORS[n] for n in entries.DEFAULT_OPTIMIZERS if n != "sam_late"
  )


def test_the_training_loop_must_keep_the_best_model():
  get_config = flags.config_loader(flags.DEFAULT_CONFIG)
  config = configs.run_config(get_config, "sgd", 0, sharpness=False)
  if configs.BEST_MODEL_FIELD in config:
    configs.check_best_model(config)  # the loop's feature is there: nothing to say
    del config[configs.BEST_MODEL_FIELD]
  with pytest.raises(ValueError, match="best_model_metric"):
    configs.check_best_model(config)


@pytest.mark.parametrize(
  "argv, flag",
  [
    (["--label_noise", "0,1"], "--label_noise"),
    (["--label_noise", "x"], "--label_noise"),
    (["--msam_rho_grid", "0,1"], "--msam_rho_grid"),
    (["--msam_rho_grid_adamw_lion", "-1"], "--msam_rho_grid_adamw_lion"),
    (["--lr_factors", "0"], "--lr_factors"),
    (["--validation_fraction", "0"], "--validation_fraction > 0 or --no_sweep"),
    (["--sweep_seed", "3"], "--sweep_seed=3 is one of --seeds"),
    (["--merge", "--report_only"], "--merge or --report_only"),
  ],
)
def test_bad_noise_and_sweep_flags_exit_with_the_reason(capsys, argv, flag):
  with pytest.raises(SystemExit):
    flags.parse_args(argv)
  assert flag in capsys.readouterr().err


def _tuned_payload(runs, optimizers, levels, seeds=(0, 1), sweep_runs=(), chosen=None, command="part"):
  return {
    "command": command,
    "commands": [command],
    "runs": runs,
    "optimizers": optimizers,
    "seeds": list(seeds),
    "config_name": "digits.py",
    "epochs": 3,
    "eval_every_epochs": 1,
    "sharpness_rho": None,
    "label_noise_seed": 0,
    "label_noise_levels": levels,
    "validation_fraction": 0.1,
    "sweep": {
      "seed": 100,
      "criteria": ["final", "early_stopped"],
      "lr_factors": [0.3, 1, 3],
      "tuned": sorted({r["optimizer"] for r in sweep_runs}),
      "grid": {"msam": {"learning_rate": [0.03, 0.1, 0.3], "rho": [0.3, 3]}},
      "runs": list(sweep_runs),
      "chosen": chosen or {},
    },
    "environment": {"device": "cpu", "platform": "cpu", "cpu_count": 2, "jax": "0"},
    "load_average_start": (1.0, 1.0, 1.0),
  }


def _two_column_runs():
  """At noise 0 and 0.4, seeds 0 and 1: sgd's choices differ (two sets of runs), msam's agree, and
  sgd+mesa reports its EMA model. Final test accuracy a, early-stopped b, per (optimizer, noise)."""
  runs = []
  for noise in (0.0, 0.4):
    for seed in (0, 1):
      runs.append(_record("sgd", seed, 0.01, accuracy=0.80 - noise / 4 + 0.01 * seed, noise=noise, chosen_by=["final"]))
      runs.append(
        _record(
          "sgd", seed, 0.01, accuracy=0.5, best=0.85 + 0.01 * seed, noise=noise, chosen_by=["early_stopped"], lr=0.3
        )
      )
      runs.append(
        _record(
          "msam",
          seed,
          0.01,
          accuracy=0.90 - noise / 4,
          best=0.88 + 0.02 * seed,
          noise=noise,
          chosen_by=["final", "early_stopped"],
        )
      )
      mesa = _record(
        "sgd+mesa", seed, 0.02, accuracy=0.79 + 0.01 * seed, noise=noise, chosen_by=["final", "early_stopped"]
      )
      mesa.update(
        final_ema_eval_accuracy=0.83 + 0.02 * seed, final_ema_eval_loss=0.5, final_ema_validation_accuracy=0.8
      )
      runs.append(mesa)
  for r in runs:  # no sharpness probes
    del r["final_sam_sharpness"], r["final_hessian_max_eigenvalue"]
  return runs


def test_both_columns_pair_with_the_bases_same_column(tmp_path):
  runs = _two_column_runs()
  payload = _tuned_payload(runs, ["sgd", "msam", "sgd+mesa"], [0.0, 0.4])
  report.write_report(str(tmp_path), payload, dpi=40)
  results = json.loads((tmp_path / "results.json").read_text())
  paired = results["paired_vs_base"]["0.4"]
  # Final: msam 0.80 vs sgd's final runs 0.70 / 0.71; early-stopped: msam 0.88 / 0.90 vs sgd's other runs 0.85 / 0.86.
  assert paired["final"]["msam"]["values"] == pytest.approx([0.10, 0.09])
  assert paired["early_stopped"]["msam"]["values"] == pytest.approx([0.03, 0.04])
  # MESA's EMA model is a row of its own, paired with sgd's final column; it has no early-stopped model.
  assert paired["final"]["sgd+mesa EMA"]["values"] == pytest.approx([0.13, 0.14])
  assert paired["final"]["sgd+mesa"]["values"] == pytest.approx([0.09, 0.09])
  assert "sgd+mesa EMA" not in paired["early_stopped"]
  summary = results["summary"]["0.4"]
  assert summary["final"]["sgd"]["final_eval_accuracy"]["values"] == pytest.approx([0.70, 0.71])
  assert summary["early_stopped"]["sgd"]["best_eval_accuracy"]["values"] == pytest.approx([0.85, 0.86])
  assert summary["final"]["sgd+mesa EMA"]["final_eval_accuracy"]["mean"] == pytest.approx(0.84)
  table = (tmp_path / "table.md").read_text()
  assert "### Label noise 0.4" in table and "sgd+mesa EMA: the same runs as sgd+mesa" in table
  row = {
    line.split(" | ")[0][2:]: line.split(" | ") for line in table.split("### Label noise 0.4")[1].splitlines()[4:8]
  }
  assert row["sgd"][1:4] == ["lr 0.1", "70.50 ± 0.71", "– (base)"] and row["sgd"][4] == "lr 0.3"
  assert row["sgd"][6] == "85.50 ± 0.71" and row["msam"][1] == row["msam"][4] == "lr 0.1, rho 0.3"
  assert row["msam"][3] == "+9.50 [+3.15, +15.85]" and row["msam"][7] == "+3.50 [-2.85, +9.85]"
  assert row["sgd+mesa EMA"][2] == "84.00 ± 1.41" and row["sgd+mesa EMA"][6] == "n/a"
  assert len({line.count("|") for line in table.splitlines() if line.startswith("|")}) == 1
  # Without sharpness probes no sharpness plot is drawn; accuracy against noise has a final-vs-best panel.
  assert (tmp_path / "accuracy_vs_noise.png").read_bytes()[:4] == b"\x89PNG"
  assert (tmp_path / "accuracy_vs_epoch_noise0.4.png").read_bytes()[:4] == b"\x89PNG"
  assert not list(tmp_path.glob("sharpness*.png"))
  assert "Not in this comparison (CPU budget" in table and "esam, asam, adamw_asam, gsam, adamw_gsam, rst." in table


def test_combine_joins_parts_and_reports_a_shared_sweep_once(tmp_path):
  runs = _two_column_runs()
  sgd_sweep = [
    {
      **_sweep_record({"learning_rate": lr}, 0.9, 0.1, 0.9, 0.1),
      "optimizer": "sgd",
      "seed": 100,
      "label_noise": 0.4,
      "run_key": f"sgd seed 100 noise 0.4 lr {lr:g} rho - steps 3",
    }
    for lr in (0.03, 0.1, 0.3)
  ]
  chosen = {"0.4": {"sgd": {c: {"learning_rate": 0.03} for c in sweep_lib.CRITERIA}}}
  part_a = _tuned_payload(
    [r for r in runs if r["optimizer"] != "msam"],
    ["sgd", "sgd+mesa"],
    [0.0, 0.4],
    sweep_runs=sgd_sweep,
    chosen=chosen,
    command="A",
  )
  part_b = _tuned_payload(
    [r for r in runs if r["optimizer"] == "msam"],
    ["msam"],
    [0.0, 0.4],
    sweep_runs=[dict(r) for r in sgd_sweep],
    chosen=chosen,
    command="B",
  )
  combined = combine.combine([part_a, part_b])
  assert combined["optimizers"] == ["sgd", "msam", "sgd+mesa"] and len(combined["runs"]) == len(runs)
  assert len(combined["sweep"]["runs"]) == 3 and len(combined["duplicate_runs"]) == 3
  assert all(d["same_accuracy_as_reported"] for d in combined["duplicate_runs"])
  assert combined["command"] == ["A", "B"] and combined["chosen_conflicts"] == []
  part_b["sweep"]["chosen"] = {"0.4": {"sgd": {c: {"learning_rate": 0.1} for c in sweep_lib.CRITERIA}}}
  assert combine.combine([part_a, part_b])["chosen_conflicts"][0]["optimizer"] == "sgd"
  # `python -m benchmarks.compare.combine` does the same from the parts' folders.
  for name, part in (("A", part_a), ("B", part_b)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(part))
  argv = [sys.executable, "-m", "benchmarks.compare.combine", str(tmp_path / "A"), str(tmp_path / "B")]
  argv += ["--out", str(tmp_path / "C")]
  env = {**os.environ, "PYTHONPATH": REPO}
  done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=True)
  assert "warning: the parts chose differently for sgd at noise 0.4" in done.stdout
  results = json.loads((tmp_path / "C" / "results.json").read_text())
  assert results["paired_vs_base"]["0.4"]["final"]["msam"]["n"] == 2 and len(results["parts"]) == 2
  assert (tmp_path / "C" / "accuracy_vs_noise.png").read_bytes()[:4] == b"\x89PNG"
  part_b["epochs"] = 4
  with pytest.raises(SystemExit, match="parts differ in epochs"):
    combine.combine([part_a, part_b])


def test_merge_reuses_finished_runs_and_keeps_the_others(tmp_path):
  runs = _two_column_runs()
  for r in runs:
    r["run_key"] = f"{r['optimizer']} seed {r['seed']} noise {r['label_noise']:g} lr {r['learning_rate']:g}"
  previous = _tuned_payload(runs, ["sgd", "msam", "sgd+mesa"], [0.0, 0.4], command="first")
  path = tmp_path / "results.json"
  path.write_text(json.dumps(previous))
  payload = _tuned_payload([], ["msam"], [0.0, 0.4], command="second")
  reusable = merge.merge_previous(payload, str(path), ["msam"])
  assert set(reusable) == {r["run_key"] for r in runs if r["optimizer"] == "msam"}
  assert payload["earlier_runs_not_reused"] is reusable  # saved until reused: nothing finished is lost
  assert {r["optimizer"] for r in payload["runs"]} == {"sgd", "sgd+mesa"}  # kept as they were
  assert payload["optimizers"] == ["sgd", "msam", "sgd+mesa"] and payload["commands"] == ["first", "second"]
  payload["epochs"] = 5
  with pytest.raises(SystemExit, match="epochs"):
    merge.merge_previous(payload, str(path), ["msam"])


def test_an_existing_results_json_is_never_overwritten(tmp_path):
  (tmp_path / "results.json").write_text("{}")
  with pytest.raises(SystemExit, match="pass --merge to continue it"):
    main.main(["--optimizers", "sgd", "--seeds", "0", "--out", str(tmp_path)])
  assert (tmp_path / "results.json").read_text() == "{}"


def test_reads_the_names_the_sharpness_probes_write():
  """The loop stores `final_<key>` for each key of `sharpness_metrics`; the script reads those."""
  import jax
  import jax.numpy as jnp
  from msam_jax import analysis

  metrics = analysis.sharpness_metrics(
    lambda p: 0.5 * jnp.sum(p * p), jnp.ones(3), jax.random.key(0), rho=0.1, num_iters=2
  )
  assert {f"final_{k}" for k in metrics} <= set(runs_lib.RUN_FIELDS)


def _fake_best_model_if_absent(monkeypatch):
  """Until the training loop keeps the best-on-validation model (issue 28, `best_model_metric`), the
  end-to-end test stands in for it: the best model is the final one (its keys, made up here only)."""
  import msam_jax.training as training

  if configs.BEST_MODEL_FIELD in training.base_config():
    return
  real = training.train_and_evaluate

  def with_best(config, workdir, **kwargs):
    results = real(config, workdir, **kwargs)
    last = results["eval_history"][-1]
    results.update(
      best_step=last["step"],
      best_epoch=last["epoch"],
      best_validation_accuracy=results["final_validation_accuracy"],
      best_validation_loss=results["final_validation_loss"],
      best_eval_accuracy=results["final_eval_accuracy"],
      best_eval_loss=results["final_eval_loss"],
      best_noisy_train_accuracy=results.get("final_noisy_train_accuracy"),
    )
    return results

  monkeypatch.setattr(training, "train_and_evaluate", with_best)
  monkeypatch.setattr("check_best_model", lambda config: None)


@pytest.mark.slow
def test_end_to_end_with_label_noise_and_a_sweep(tmp_path, capsys, monkeypatch):
  """Real training, a few steps: at noise 0 and 0.4, sgd's one-point learning-rate sweep and msam's
  two-point rho sweep on validation data, then both optimizers at their choices; then the same
  command with --merge reuses every run. The probes are left out (their compilation takes longer
  than the runs), the probe names are checked above and the probes themselves in tests/analysis."""
  _fake_best_model_if_absent(monkeypatch)
  argv = ["--optimizers", "sgd,msam", "--seeds", "0", "--label_noise", "0,0.4", "--lr_factors", "1"]
  argv += ["--msam_rho_grid", "0.3,3", "--steps", "3", "--no_sharpness", "--out", str(tmp_path)]
  argv += ["--compilation_cache", str(tmp_path / "cache")]
  main.main(argv)
  pngs = ["accuracy_vs_noise.png"] + [f"accuracy_vs_{x}_noise{n}.png" for x in ("epoch", "time") for n in ("0", "0.4")]
  results = _check_outputs(
    tmp_path,
    ["sgd", "msam"],
    num_runs=len(json.loads((tmp_path / "results.json").read_text())["runs"]),
    probes=False,
    pngs=pngs,
  )
  assert not list(tmp_path.glob("sharpness*.png"))
  sweep = results["sweep"]
  points = [(r["optimizer"], r["label_noise"], r["point"]) for r in sweep["runs"]]
  assert points == [
    (name, noise, point)
    for noise in (0.0, 0.4)
    for name, point in (
      ("sgd", {"learning_rate": 0.1}),
      ("msam", {"learning_rate": 0.1, "rho": 0.3}),
      ("msam", {"learning_rate": 0.1, "rho": 3.0}),
    )
  ]
  assert all(r["seed"] == 100 for r in sweep["runs"])
  for level in ("0", "0.4"):
    msam_sweep = [
      r for r in sweep["runs"] if r["optimizer"] == "msam" and runs_lib.level_key(r["label_noise"]) == level
    ]
    for c in sweep_lib.CRITERIA:
      assert sweep["chosen"][level]["msam"][c] == sweep_lib.choose(msam_sweep, c)
  reported = [r for r in results["runs"] if r["optimizer"] == "msam" and r["label_noise"] == 0.4]
  assert sorted(c for r in reported for c in r["chosen_by"]) == ["early_stopped", "final"]
  for r in reported:
    assert r["rho"] == sweep["chosen"]["0.4"]["msam"][r["chosen_by"][0]]["rho"]
  by_name = {(r["optimizer"], r["label_noise"]): r for r in results["runs"]}
  assert by_name[("sgd", 0.0)]["label_noise_realised_fraction"] == 0.0
  assert abs(by_name[("sgd", 0.4)]["label_noise_realised_fraction"] - 0.4) < 0.06  # 1293 examples
  for run in results["runs"]:
    assert run["eval_history"][-1]["step"] == 3 and 0.0 <= run["final_eval_accuracy"] <= 1.0
    assert 0.0 <= run["final_validation_accuracy"] <= 1.0 and 0.0 <= run["final_noisy_train_accuracy"] <= 1.0
    assert 0.0 <= run["best_eval_accuracy"] <= 1.0 and run["best_step"] <= 3
    assert run["training_seconds"] > 0 and run["seconds_per_step"] > 0
  assert results["paired_vs_base"]["0.4"]["final"]["msam"]["n"] == 1
  out = capsys.readouterr().out
  assert "[sweep, noise 0, sgd, a: learning rate] sgd seed 100 noise 0 lr 0.1 rho - steps 3: training..." in out
  assert "[noise 0.4, seed 0, final" in out
  # Continued with --merge: every run is there already, none is trained again.
  main.main(argv + ["--merge"])
  out = capsys.readouterr().out
  assert "training..." not in out and out.count("finished earlier, reused") == len(results["runs"]) + 6
  again = json.loads((tmp_path / "results.json").read_text())
  assert [r["run_key"] for r in again["runs"]] == [r["run_key"] for r in results["runs"]]
  assert again["earlier_runs_not_reused"] == {} and again["commands"][0] == results["command"]
  main.main(["--report_only", "--out", str(tmp_path)])  # redraws from results.json alone
  assert (tmp_path / "table.md").read_text().count("### Label noise") == 2


def test_the_committed_tuned_comparison_is_what_combine_makes_of_its_parts(tmp_path, monkeypatch):
  """benchmarks/results/compare_digits_tuned: its parts/*.json, combined and reported by today's code,
  give its results.json and table.md exactly (the plots are left out here: drawing them is slow)."""
  folder = os.path.join(REPO, "benchmarks", "results", "compare_digits_tuned")
  for name in ("plot_accuracy", "plot_accuracy_vs_noise", "plot_sharpness"):
    monkeypatch.setattr(report, name, lambda *args, **kwargs: None)
  parts = []
  for name in ("A", "B", "C"):
    with open(os.path.join(folder, "parts", f"{name}.json")) as f:
      parts.append(json.load(f))
  report.write_report(str(tmp_path), combine.combine(parts))
  for name in ("results.json", "table.md"):
    with open(os.path.join(folder, name)) as f:
      assert (tmp_path / name).read_text() == f.read(), name
