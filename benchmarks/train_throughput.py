"""Throughput of the training loop's own step, per optimizer and dtype, on one device.

    python -m benchmarks.train_throughput                      # the four original setups
    python -m benchmarks.train_throughput --quick              # tiny shapes, CPU, about a minute
    python -m benchmarks.train_throughput --setups imagenet_vit --optimizers sgd,msam \\
        --dtypes bfloat16 --rounds 5 --steps 20 --vit_batch 256 --profile_dir /tmp/prof
    python -m benchmarks.train_throughput --quick --optimizers sgd,msam --mesa_weight 0.3   # + MESA
    python -m benchmarks.train_throughput --setups digits_cnn,cifar100_wrn16_4 --batch_size 16 \
        --optimizers sgd,sam,looksam,rst --late_sam 0.2 --dtypes float32 --steps 20   # the cheap SAM steps

What is timed is the loop's own jitted steps, `msam_jax.training.setup.build(config,
mesh).train_step_at(step)` (forward, backward, the optimizer's update including the SAM
family's extra passes through `loss_fn`, loss scaling and accumulation where the
config asks, apply, metrics), state donated, for the setup's `configs/*.py` with
`config.dataset="synthetic"` on a one-device mesh. The config's run is `--steps`
steps long (`num_train_steps`), and every round runs it whole, each step with the
variant the loop would call (with or without the SAM family's second gradient,
decided on the host): for LookSAM (every k-th step), RST (its draws) and late SAM
(`--late_sam F`: "sam (late F)", SAM for the last fraction F of the run, the base
before) a round is a whole run, and "2nd grad" is the fraction of its steps that
take the second gradient. Batches are one synthetic batch
(`msam_jax.data.synthetic`) already on the device, so input is not measured;
`train.py` with `config.dataset="synthetic"` times the whole loop.

`digits_cnn` is `configs/digits.py`'s CNN on 8x8x1 images; `--batch_size` sets
every setup's batch (small batches for a CPU).

`--quick` alone covers one setup (a tiny WRN, 16x16 images), the first optimizer
of each family in the registry (sgd, msam, sam) and float32; any of `--setups`,
`--optimizers`, `--dtypes` widens it.

Rounds are interleaved: every (optimizer, dtype) runs `--steps` steps in turn,
in an order rotated each round, so each ratio compares times taken under the
same machine load. "ratio" is the median over rounds of step time / step time
of the base (sgd, adamw or lion: the registry entry's base) in the same round and dtype; "<base>, again" is the
base measured a second time (own state, same executable): its ratio is the A/A
control, the noise floor of every other ratio. With `--mesa_weight` each
optimizer also runs with MESA (`<optimizer>+mesa`, the term on from step 0:
the EMA model's forward pass and the EMA update), its ratio taken to the same
optimizer without MESA. "bf16 x" is the median over
rounds of float32 step time / bfloat16 step time of the same optimizer.

GFLOP/step is XLA's cost analysis of the compiled steps (static: it counts
every dot and convolution, whatever their speed), averaged over the run's steps. MFU = those flops / step
time / the device's peak (PEAK_FLOPS below) for the dtype; blank where the
device is not in the table (CPUs). One device only: the data-parallel loop
multiplies images/s by the device count at best.
"""

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time

import jax

from msam_jax import data
from msam_jax.optim import registry
from msam_jax.training import config as config_lib
from msam_jax.training import mesh as mesh_lib
from msam_jax.training import setup as setup_lib
from msam_jax.training.config import OPTIMIZERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "bfloat16")

# Dense peak FLOP/s per JAX device, (bfloat16, float32), from the vendors' data sheets:
# NVIDIA H100/H200 (SXM), H100 PCIe, A100, L4 data sheets (tensor-core figures without
# sparsity; float32 is TF32, which XLA uses for float32 dots and convolutions on these GPUs
# at JAX's default precision); Google Cloud TPU "system architecture" pages (bf16 per chip;
# v2/v3 expose each of a chip's 2 cores as a device, so half; float32 at JAX's default
# precision runs as one bfloat16 pass, hence the same peak). Matched as a substring of
# `jax.devices()[0].device_kind`, first match wins (so "H100 PCIe" precedes "H100").
PEAK_FLOPS = (
  ("H100 PCIe", 756e12, 378e12),
  ("H100", 989e12, 495e12),
  ("H200", 989e12, 495e12),
  ("GH200", 989e12, 495e12),
  ("B200", 2250e12, 1100e12),
  ("A100", 312e12, 156e12),
  ("L4", 121e12, 60e12),
  ("TPU v6 lite", 918e12, 918e12),  # v6e
  ("TPU v5 lite", 197e12, 197e12),  # v5e
  ("TPU v5", 459e12, 459e12),  # v5p
  ("TPU v4", 275e12, 275e12),
  ("TPU v3", 61.5e12, 61.5e12),
  ("TPU v2", 22.5e12, 22.5e12),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak for `dtype` ("float32" or "bfloat16"), None if unknown."""
  for key, bf16, fp32 in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else fp32
  return None


@dataclasses.dataclass(frozen=True)
class Setup:
  """One of the original's experiments: its config, and the batch one device runs."""

  config: str  # configs/<config>.py
  batch: int
  image_shape: tuple[int, int, int]
  quick_model: dict  # --quick: a tiny model of the same family, 16x16 or 32x32 images
  quick_shape: tuple[int, int, int]


SETUPS = {
  "cifar100_wrn16_4": Setup("cifar100_wrn16_4", 256, (32, 32, 3), {"depth": 10, "width": 1}, (16, 16, 3)),
  "cifar100_resnet50": Setup("cifar100_resnet50", 256, (32, 32, 3), {"depth": 18, "width": 4}, (16, 16, 3)),
  "imagenet_resnet50": Setup("imagenet_resnet50", 128, (224, 224, 3), {"depth": 18, "width": 4}, (32, 32, 3)),
  "imagenet_vit": Setup(
    "imagenet_vit", 256, (224, 224, 3), {"size": "Ti", "depth": 1, "patch_size": 8, "image_size": 32}, (32, 32, 3)
  ),
}
ORIGINAL_SETUPS = tuple(SETUPS)  # the paper's four: the default
SETUPS["digits_cnn"] = Setup("digits", 64, (8, 8, 1), {}, (8, 8, 1))  # the small CNN, for CPUs
QUICK_BATCH = 8


QUICK_SETUPS = ("cifar100_wrn16_4",)
QUICK_OPTIMIZERS = tuple({registry.get(n).family: n for n in reversed(OPTIMIZERS)}[f] for f in registry.FAMILIES)
QUICK_DTYPES = ("float32",)


def base_of(optimizer: str) -> str:
  """The plain optimizer another one is compared with: its registry entry's base."""
  return registry.get(optimizer).base


def run_config(
  setup: Setup,
  optimizer: str,
  dtype: str,
  *,
  quick: bool,
  batch_size: int,
  num_steps: int = 1,
  late: float | None = None,
):
  """The setup's config file, on synthetic batches of the benchmark's shape (tiny model with --quick),
  a run of `num_steps` steps; `late`: rho 0 until the last fraction `late` of the run."""
  config = config_lib.load_file(os.path.join(REPO, "configs", f"{setup.config}.py"))
  image_shape = setup.quick_shape if quick else setup.image_shape
  num_classes = data.dataset_info(config.dataset, image_size=config.image_size).num_classes
  config.dataset = "synthetic"
  config.synthetic = {
    "image_shape": image_shape,
    "num_classes": num_classes,
    "num_train": max(batch_size, 50_000),
    "num_test": 1,
  }
  if config.image_size is not None:
    config.image_size = image_shape[0]
  if quick:
    config_lib.set_model(config, config.model, **{k: v for k, v in setup.quick_model.items() if k != "image_size"})
  config_lib.set_optimizer(config, optimizer)
  config.dtype, config.batch_size, config.eval_batch_size = dtype, batch_size, batch_size
  config.validation_fraction, config.num_train_steps = 0.0, num_steps
  if late is not None:  # the base for the first 1 - late of the run, SAM after
    info = data.dataset_info(config.dataset, image_size=config.image_size, synthetic=config_lib.synthetic_spec(config))
    config.rho_schedule = "start_jump"
    config.rho_jump_epochs = (1 - late) * num_steps / data.steps_per_epoch(info, batch_size)
  return config


class Run:
  """One (optimizer, dtype): the loop's compiled steps, its donated state and per-round step times.

  `compiled` maps each `second_gradient` variant the run uses to its executable; `plan` is the
  variant of each step of the run (the setup's host decisions), replayed in every round.
  """

  def __init__(self, label, optimizer, dtype, setup, compiled, flops, base=None):
    self.label, self.optimizer, self.dtype, self.setup, self.compiled, self.flops = (
      label,
      optimizer,
      dtype,
      setup,
      compiled,
      flops,
    )
    self.base = base_of(optimizer) if base is None else base
    self.times, self.index = [], 0
    self.plan = [None] if setup is None else [setup.step_variant(i) for i in range(setup.num_steps)]
    if setup is not None:
      self.state = setup.init_state()
      self.metrics, self.first_bad = setup.empty_metrics()
      self.batch = setup.global_batch(next(setup.train_batches(seed=setup.config.seed)))  # the loop's first batch
      self.rng = setup.dropout_rng

  @property
  def second_gradient_fraction(self) -> float:
    """The fraction of the run's steps that take the SAM family's second gradient (NaN outside it)."""
    return float("nan") if self.plan[0] is None else sum(self.plan) / len(self.plan)

  def step(self, variant=None) -> None:
    """The run's next step (`variant`: that variant instead, without advancing the run)."""
    if variant is None:
      variant = self.plan[self.index % len(self.plan)]
      self.index += 1
    self.state, self.metrics, self.first_bad = self.compiled[variant](
      self.state, self.metrics, self.first_bad, self.batch, self.rng
    )

  def time_steps(self, num_steps: int) -> None:
    jax.block_until_ready(self.state)
    start = time.perf_counter()
    for _ in range(num_steps):
      self.step()
    jax.block_until_ready(self.state)
    self.times.append((time.perf_counter() - start) / num_steps)


def build_run(
  setup: Setup,
  optimizer: str,
  dtype: str,
  *,
  quick: bool,
  batch_size: int,
  device,
  label: str | None = None,
  twin: "Run | None" = None,
  mesa_weight: float = 0.0,
  num_steps: int = 1,
  late: float | None = None,
) -> Run:
  """The loop's steps and state for one device (`setup.build`); `twin` shares its executables (A/A).

  A run of `num_steps` steps (`late`: SAM's rho 0 until its last fraction `late`).
  `mesa_weight > 0`: with MESA, the term on from the first step, compared with `optimizer` alone.
  """
  if twin is not None:
    run = Run(label or optimizer, optimizer, dtype, twin.setup, twin.compiled, twin.flops)
  else:
    config = run_config(setup, optimizer, dtype, quick=quick, batch_size=batch_size, num_steps=num_steps, late=late)
    if mesa_weight > 0:
      config.mesa_weight, config.mesa_start_epoch = mesa_weight, 0.0
    s = setup_lib.build(config, mesh_lib.create_mesh([device]))
    run = Run(label or optimizer, optimizer, dtype, s, {}, float("nan"), optimizer if mesa_weight > 0 else None)
    flops = {}
    for variant in dict.fromkeys(run.plan):  # only the variants the run uses
      run.compiled[variant] = (
        s.train_steps[variant].lower(run.state, run.metrics, run.first_bad, run.batch, run.rng).compile()
      )
      cost = run.compiled[variant].cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      flops[variant] = (cost or {}).get("flops", float("nan"))
    run.flops = sum(flops[v] for v in run.plan) / len(run.plan)
  for variant in run.compiled:  # first executions: allocation, autotuning
    run.step(variant)
  jax.block_until_ready(run.state)
  return run


def summarize(runs: list[Run], batch_size: int, device_kind: str) -> list[dict]:
  """One row per run: median step time, images/s, ratios, flops, MFU."""
  by_key = {(r.label, r.dtype): r for r in runs}
  rows = []
  for r in runs:
    step_s = statistics.median(r.times)
    base = by_key.get((r.base, r.dtype))
    ratio = statistics.median(t / b for t, b in zip(r.times, base.times)) if base is not None else float("nan")
    f32 = by_key.get((r.label, "float32"))
    speedup = (
      statistics.median(a / b for a, b in zip(f32.times, r.times))
      if r.dtype == "bfloat16" and f32 is not None
      else float("nan")
    )
    peak = peak_flops(device_kind, r.dtype)
    rows.append(
      {
        "optimizer": r.label,
        "dtype": r.dtype,
        "step_ms": step_s * 1e3,
        "images_per_s": batch_size / step_s,
        "ratio_to_base": ratio,
        "base": r.base,
        "bf16_speedup": speedup,
        "gflop_per_step": r.flops / 1e9,
        "second_gradient_fraction": r.second_gradient_fraction,
        "mfu": r.flops / step_s / peak if peak else float("nan"),
      }
    )
  return rows


def _fmt(x, spec, suffix=""):
  return "" if math.isnan(x) else format(x, spec) + suffix


def print_table(name: str, rows: list[dict], batch_size: int, image_shape) -> None:
  print(f"\n{name}: batch {batch_size}, images {'x'.join(map(str, image_shape))}\n")
  print("| optimizer | dtype | step (ms) | images/s | ratio to base | bf16 x | 2nd grad | GFLOP/step | MFU |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for row in rows:
    print(
      f"| {row['optimizer']} | {row['dtype']} | {row['step_ms']:.1f} | {row['images_per_s']:.0f} | "
      f"{_fmt(row['ratio_to_base'], '.3f')} ({row['base']}) | {_fmt(row['bf16_speedup'], '.2f')} | "
      f"{_fmt(row['second_gradient_fraction'], '.2f')} | "
      f"{row['gflop_per_step']:.2f} | {_fmt(row['mfu'] * 100, '.1f', '%')} |",
      flush=True,
    )


def benchmark_setup(name: str, args, device) -> list[dict]:
  setup = SETUPS[name]
  batch_size = (
    QUICK_BATCH
    if args.quick
    else (
      args.imagenet_batch if name == "imagenet_resnet50" else args.vit_batch if name == "imagenet_vit" else setup.batch
    )
  )
  batch_size = args.batch_size or batch_size
  runs = []
  common = dict(quick=args.quick, batch_size=batch_size, device=device, num_steps=args.steps)
  for dtype in args.dtypes:
    for optimizer in args.optimizers:
      runs.append(build_run(setup, optimizer, dtype, **common))
      if args.mesa_weight > 0:
        runs.append(
          build_run(setup, optimizer, dtype, **common, label=f"{optimizer}+mesa", mesa_weight=args.mesa_weight)
        )
    if args.late_sam is not None:
      runs.append(build_run(setup, "sam", dtype, **common, label=f"sam (late {args.late_sam:g})", late=args.late_sam))
    for base in dict.fromkeys(base_of(o) for o in args.optimizers):  # the A/A controls
      twin = next((r for r in runs if r.label == base and r.dtype == dtype), None)
      if twin is not None:
        runs.append(build_run(setup, base, dtype, **common, label=f"{base}, again", twin=twin))
  for round_index in range(args.rounds):
    shift = round_index % len(runs)
    for run in runs[shift:] + runs[:shift]:
      run.time_steps(args.steps)
  if args.profile_dir:  # one more round under the profiler (not in the table): the top ops per step
    with jax.profiler.trace(os.path.join(args.profile_dir, name)):
      for run in runs:
        run.time_steps(args.steps)
        run.times.pop()
  rows = summarize(runs, batch_size, device.device_kind)
  print_table(name, rows, batch_size, setup.quick_shape if args.quick else setup.image_shape)
  return rows


def parse_list(text: str, flag: str, choices) -> list[str]:
  items = [s.strip() for s in text.split(",") if s.strip()]
  bad = [s for s in items if s not in choices]
  if not items or bad or len(set(items)) != len(items):
    raise ValueError(f"{flag}={text!r}: give distinct names from {', '.join(choices)}.")
  return items


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="tiny models and shapes; alone: one setup, sgd/msam/sam, float32 (CPU, ~1 min)"
  )
  parser.add_argument("--setups", default=None, help=f"of {', '.join(SETUPS)}; default: {', '.join(ORIGINAL_SETUPS)}")
  parser.add_argument("--optimizers", default=None, help="default: every registered optimizer")
  parser.add_argument("--dtypes", default=None, help=f"default: {','.join(DTYPES)}")
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 3)")
  parser.add_argument("--steps", type=int, default=None, help="steps per run per round (default 10; --quick 2)")
  parser.add_argument("--imagenet_batch", type=int, default=128, help="ResNet-50 ImageNet batch on the device")
  parser.add_argument("--batch_size", type=int, default=None, help="every setup's batch (default: each its own)")
  parser.add_argument(
    "--late_sam",
    type=float,
    default=None,
    help="also time 'sam (late F)': a run whose last fraction F (in (0, 1]) is SAM, the base before",
  )
  parser.add_argument("--vit_batch", type=int, default=256, help="ViT-S/32 ImageNet batch on the device")
  parser.add_argument(
    "--profile_dir",
    default=None,
    help="also write a jax.profiler trace of one extra round per setup (TensorBoard/XProf)",
  )
  parser.add_argument(
    "--mesa_weight", type=float, default=0.0, help="> 0: also time each optimizer with MESA (this lambda)"
  )
  args = parser.parse_args(argv)
  for flag, full, quick in (
    ("setups", ORIGINAL_SETUPS, QUICK_SETUPS),
    ("optimizers", OPTIMIZERS, QUICK_OPTIMIZERS),
    ("dtypes", DTYPES, QUICK_DTYPES),
  ):
    if getattr(args, flag) is None:
      setattr(args, flag, ",".join(quick if args.quick else full))
  try:
    args.setups = parse_list(args.setups, "--setups", tuple(SETUPS))
    args.optimizers = parse_list(args.optimizers, "--optimizers", OPTIMIZERS)
    args.dtypes = parse_list(args.dtypes, "--dtypes", DTYPES)
    args.rounds = (3 if args.quick else 5) if args.rounds is None else args.rounds
    args.steps = (2 if args.quick else 10) if args.steps is None else args.steps
    if not args.mesa_weight >= 0:
      raise ValueError(f"--mesa_weight must be >= 0, got {args.mesa_weight}.")
    if args.late_sam is not None and not 0 < args.late_sam <= 1:
      raise ValueError(f"--late_sam must be in (0, 1], got {args.late_sam}.")
    if args.batch_size is not None and args.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}.")
    for flag in ("rounds", "steps", "imagenet_batch", "vit_batch"):
      if getattr(args, flag) < 1:
        raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
  except ValueError as e:
    parser.error(str(e))
  return args


def main(argv=None) -> dict[str, list[dict]]:
  args = parse_args(argv)
  device = jax.devices()[0]
  peak = peak_flops(device.device_kind, "bfloat16")
  print(
    f"device: {device.platform} / {device.device_kind} (1 of {jax.device_count()}), jax {jax.__version__}; "
    f"{args.rounds} interleaved rounds of {args.steps} steps; peak bf16 "
    f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (no MFU)'}"
    f"{'; --quick: tiny models' if args.quick else ''}"
  )
  print(f"command: python -m benchmarks.train_throughput {' '.join(sys.argv[1:] if argv is None else argv)}")
  return {name: benchmark_setup(name, args, device) for name in args.setups}


if __name__ == "__main__":
  main()
