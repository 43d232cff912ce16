"""--dry_run: every run a command would make, with its estimated wall time."""

from msam_jax.optim import registry

from benchmarks.compare.entries import BASE_OPTIMIZER, registry_name
from benchmarks.compare.sweep import lr_grid, rho_grid


# Seconds of one run of configs/digits.py (30 epochs, evaluated every epoch, label noise 0.4,
# no sharpness probes; setup included, compilation cache warm) on the project's 2-core CPU
# under a load average of 5-8 (the other engineers' jobs), from `--no_sweep --epochs 30
# --seeds 0 --label_noise 0.4` runs: sgd 14.6 s warm (28.0 s cold); sam 32.8 s, looksam
# 49.4 s and sgd+mesa 43.5 s cold, less the ~10 s a first compilation took for sgd. The
# others by their time per step in the noisy-label comparison: MSAM's, AdamW's and Lion's
# step costs about SGD's, every SAM-family step (late SAM's included, until its rho-0 steps
# take one gradient) about SAM's, rst's LookSAM's. At a load average of 9-11 sgd took 30-45 s.
RUN_SECONDS = {"sgd": 15.0, "sam": 24.0, "looksam": 40.0, "sgd+mesa": 33.0}
# The sharpness probes at the end of a reported run, compilation cache warm: 7.4 s in the same
# measurement, half an SGD run; the protocol leaves them out (--no_sharpness).
PROBE_SECONDS = 7.5
COSTS_LIKE = {"looksam": "looksam", "rst": "looksam", "sgd+mesa": "sgd+mesa"}


def estimated_seconds(name: str, epochs: float) -> float:
  """A rough wall time of one run of `name` for `epochs` epochs (RUN_SECONDS, scaled)."""
  like = COSTS_LIKE.get(name) or ("sam" if registry.get(registry_name(name)).family == "sam" else "sgd")
  return RUN_SECONDS[like] * epochs / 30


def planned_runs(args, tuned: list[str], epochs: float) -> list[tuple[str, float, bool]]:
  """Every run the comparison would make, in order: (what, estimated seconds, certain).

  Not certain: the runs made only when the two criteria choose differently (a second
  stage-(c) sweep; a second set of reported runs at the early-stopped choice).
  """
  plan = []
  for noise in args.label_noise:
    at = f"noise {noise:g}"
    for name in tuned:
      seconds = estimated_seconds(name, epochs)
      centre = args.lr.get(name, args.config_lr) if BASE_OPTIMIZER[name] == "sgd" else args.lr.get(name)
      lrs = lr_grid(args, centre if centre is not None else args.config_lr)
      rhos = rho_grid(name, args)
      sweep = f"{at} sweep seed {args.sweep_seed}: {name}"
      if not rhos:
        plan += [(f"{sweep} (a) lr {lr:g}", seconds, True) for lr in lrs]
        continue
      base = BASE_OPTIMIZER[name]
      plan += [(f"{sweep} (b) rho {rho:g} at {base}'s early-stopped lr", seconds, True) for rho in rhos]
      others = f"of {'/'.join(f'{lr:g}' for lr in lrs)} other than {base}'s early-stopped lr"
      for i in range(len(lrs) - 1):
        plan.append((f"{sweep} (c) lr {i + 1} {others}, at the early-stopped rho", seconds, True))
      for i in range(len(lrs) - 1):
        plan.append((f"{sweep} (c) lr {i + 1} {others}, at the final rho if it differs", seconds, False))
    for seed in args.seeds:
      for name in args.optimizers:
        seconds = estimated_seconds(name, epochs) + (0 if args.no_sharpness else PROBE_SECONDS)
        if args.no_sweep:
          plan.append((f"{at} seed {seed}: {name} (both columns)", seconds, True))
        else:
          plan.append((f"{at} seed {seed}: {name} at its final choice (and early-stopped, if the same)", seconds, True))
          plan.append((f"{at} seed {seed}: {name} at its early-stopped choice, if it differs", seconds, False))
  return plan


def estimate(plan: list[tuple[str, float, bool]]) -> dict:
  certain = [s for _, s, c in plan if c]
  return {
    "runs_min": len(certain),
    "runs_max": len(plan),
    "minutes_min": sum(certain) / 60,
    "minutes_max": sum(s for _, s, _ in plan) / 60,
  }


def print_plan(plan: list[tuple[str, float, bool]]) -> None:
  for index, (what, seconds, certain) in enumerate(plan, 1):
    print(f"{index:4d}. {what}  (~{seconds:.0f} s{'' if certain else ', only if the choices differ'})")
  e = estimate(plan)
  print(
    f"{e['runs_min']} runs if every pair of choices agrees, {e['runs_max']} if all differ; about"
    f" {e['minutes_min']:.0f}-{e['minutes_max']:.0f} minutes of one process (RUN_SECONDS: measured on the"
    " project's 2-core CPU under a load average of 5-8)",
    flush=True,
  )
