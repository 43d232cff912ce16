"""benchmarks/train_throughput.py: the peak table, the summary arithmetic, and one --quick run."""

import math

import pytest

from benchmarks import train_throughput as bench


def test_peak_table_matches_device_kinds():
  assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert bench.peak_flops("NVIDIA H100 PCIe", "float32") == 378e12
  assert bench.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert bench.peak_flops("TPU v5", "bfloat16") == 459e12
  assert bench.peak_flops("cpu", "bfloat16") is None


def test_each_optimizer_is_compared_with_its_registry_base():
  from msam_jax.optim import registry

  for name in registry.names():
    base = bench.base_of(name)
    assert base == registry.get(name).base and registry.get(base).family == "base", name
  assert bench.base_of("adamw_gsam") == "adamw" and bench.base_of("looksam") == "sgd"
  assert bench.QUICK_OPTIMIZERS == ("sgd", "msam", "sam")  # the first of each family


def test_quick_alone_is_one_small_setup_and_any_flag_widens_it():
  args = bench.parse_args(["--quick"])
  assert (args.setups, args.optimizers, args.dtypes) == (["cifar100_wrn16_4"], ["sgd", "msam", "sam"], ["float32"])
  args = bench.parse_args(["--quick", "--dtypes", "float32,bfloat16"])
  assert args.dtypes == ["float32", "bfloat16"] and args.setups == ["cifar100_wrn16_4"]
  args = bench.parse_args([])
  assert len(args.setups) == 4 and len(args.optimizers) == len(bench.OPTIMIZERS) and len(args.dtypes) == 2


def test_summary_ratios_are_per_round_medians():
  def run(label, optimizer, dtype, times, flops=2e9, base=None):
    r = bench.Run(label, optimizer, dtype, None, None, flops, base)
    r.times = times
    return r

  runs = [
    run("sgd", "sgd", "float32", [1.0, 2.0, 1.0]),
    run("msam", "msam", "float32", [1.1, 2.2, 1.1]),
    run("msam+mesa", "msam", "float32", [1.32, 2.64, 1.32], base="msam"),  # --mesa_weight: vs msam alone
    run("sgd", "sgd", "bfloat16", [0.5, 1.0, 0.5]),
    run("sgd, again", "sgd", "bfloat16", [0.5, 1.0, 0.6]),
  ]
  rows = {(r["optimizer"], r["dtype"]): r for r in bench.summarize(runs, 10, "NVIDIA H100 80GB HBM3")}
  assert rows["msam", "float32"]["ratio_to_base"] == pytest.approx(1.1)
  assert rows["msam", "float32"]["images_per_s"] == pytest.approx(10 / 1.1)
  assert rows["msam+mesa", "float32"]["ratio_to_base"] == pytest.approx(1.2)
  assert rows["sgd", "bfloat16"]["bf16_speedup"] == pytest.approx(2.0)
  assert rows["sgd, again", "bfloat16"]["ratio_to_base"] == pytest.approx(1.0)
  assert rows["sgd", "bfloat16"]["mfu"] == pytest.approx(2e9 / 0.5 / 989e12)
  assert math.isnan(rows["msam", "float32"]["bf16_speedup"])


def test_bad_flags_exit_with_the_reason(capsys):
  for argv in (
    ["--optimizers", "sgd,nosuch"],
    ["--dtypes", "float16"],
    ["--rounds", "0"],
    ["--mesa_weight", "-1"],
    ["--late_sam", "1.5"],
    ["--batch_size", "0"],
  ):
    with pytest.raises(SystemExit):
      bench.parse_args(argv)
    assert argv[0] in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_on_cpu(capsys):
  """A tiny WRN, runs of 2 steps timed on the loop's host-decided path: LookSAM (k=1 would be
  SAM; the default k=5 makes step 0 a SAM step, step 1 not) and late SAM (its second half SAM)
  take the second gradient on half their steps, which shows in their mean flops; A/A present.

  float32 only: bfloat16 doubles the compile time on CPU; its column's arithmetic is
  test_summary_ratios_are_per_round_medians, bfloat16 training tests/training/test_precision.py.
  """
  argv = (
    "--quick --setups cifar100_wrn16_4 --optimizers sgd,looksam --late_sam 0.5 --dtypes float32 --rounds 2 --steps 2"
  )
  results = bench.main(argv.split())
  rows = {r["optimizer"]: r for r in results["cifar100_wrn16_4"]}
  assert set(rows) == {"sgd", "looksam", "sam (late 0.5)", "sgd, again"}
  for row in rows.values():
    assert row["step_ms"] > 0 and row["images_per_s"] > 0 and row["gflop_per_step"] > 0
    assert math.isnan(row["mfu"])  # CPU: no known peak
  assert rows["sgd"]["ratio_to_base"] == 1.0 and math.isnan(rows["sgd"]["second_gradient_fraction"])
  sgd_flops = rows["sgd"]["gflop_per_step"]
  for name in ("looksam", "sam (late 0.5)"):
    assert rows[name]["second_gradient_fraction"] == 0.5 and rows[name]["base"] == "sgd"
    assert 1.3 * sgd_flops < rows[name]["gflop_per_step"] < 1.7 * sgd_flops  # one step in two: 2 gradients
  assert rows["sgd, again"]["gflop_per_step"] == sgd_flops
  out = capsys.readouterr().out
  assert "| sgd, again | float32 |" in out and "2nd grad" in out


@pytest.mark.slow
def test_the_timed_step_is_the_training_loops_step(tmp_path):
  """One step of the benchmark's run equals one step of train_and_evaluate on the same config:
  same state after it, bit for bit (same batch, same dropout key, same compiled step)."""
  import jax

  from helpers import assert_trees_equal, final_checkpoint
  from msam_jax import training
  from msam_jax.training import mesh as mesh_lib

  setup = bench.SETUPS["cifar100_wrn16_4"]
  device = jax.devices()[0]
  run = bench.build_run(setup, "msam", "float32", quick=True, batch_size=8, device=device)  # has stepped once
  config = bench.run_config(setup, "msam", "float32", quick=True, batch_size=8)
  config.update(num_train_steps=1, bn_recompute_batches=0, async_checkpointing=False)
  training.train_and_evaluate(config, str(tmp_path), mesh=mesh_lib.create_mesh([device]))
  step, state = final_checkpoint(str(tmp_path))
  assert step == 1 and int(run.state.step) == 1
  assert_trees_equal(state["params"], run.state.params)
  assert_trees_equal(state["batch_stats"], run.state.batch_stats)
