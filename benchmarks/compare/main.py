"""The comparison (`python -m benchmarks.compare`): checks every config, sweeps, trains, writes the report."""

import datetime
import json
import os
import platform
import sys
import time

from benchmarks.compare.configs import check_best_model, run_config, steps_per_epoch
from benchmarks.compare.entries import BASE_OPTIMIZER
from benchmarks.compare.flags import parse_args
from benchmarks.compare.merge import merge_previous
from benchmarks.compare.plan import estimate, planned_runs, print_plan
from benchmarks.compare.report import write_json, write_report
from benchmarks.compare.runs import level_key, print_run, run_key, train_one
from benchmarks.compare.sweep import CRITERIA, lr_grid, reported_points, rho_grid, tune, tuned_optimizers


def environment() -> dict:
  """The machine and versions the runs ran on (results.json's `environment`)."""
  import jax

  device = jax.devices()[0]
  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "jax": jax.__version__,
    "platform": device.platform,
    "device": device.device_kind,
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "python": platform.python_version(),
  }


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  results_path = os.path.join(args.out, "results.json")
  if args.report_only:
    with open(results_path) as f:
      payload = json.load(f)
    write_report(args.out, payload, args.dpi)
    print(open(os.path.join(args.out, "table.md")).read())
    return payload

  def config_of(name, seed, noise, point=None, sharpness=False):
    """A reported run's config (`point`: its learning rate and rho), or a sweep run's (at args.sweep_seed)."""
    point = point or {}
    return run_config(
      args.get_config,
      name,
      seed,
      epochs=args.epochs,
      steps=args.steps,
      rho=point.get("rho", args.rho.get(name)),
      learning_rate=point.get("learning_rate", args.lr.get(name)),
      weight_decay=args.weight_decay.get(name),
      sharpness=sharpness,
      label_noise=noise,
      label_noise_seed=args.label_noise_seed,
      validation_fraction=args.validation_fraction,
      eval_every_epochs=args.eval_every_epochs,
    )

  tuned = [] if args.no_sweep else tuned_optimizers(args.optimizers)
  first = config_of(args.optimizers[0], args.seeds[0], args.label_noise[0])
  epochs = first.num_train_steps / steps_per_epoch(first) if first.num_train_steps > 0 else first.num_epochs
  plan = planned_runs(args, tuned, epochs)
  if args.dry_run:
    print_plan(plan)
    return None
  if os.path.exists(results_path) and not args.merge:
    raise SystemExit(
      f"{results_path} exists: pass --merge to continue it (its finished runs are kept) or choose another --out."
    )
  import jax
  from msam_jax.training import mesh as mesh_lib, validate

  mesh = mesh_lib.create_mesh(jax.devices()[:1])  # one device: times comparable across machines
  # A bad override or grid point fails now, not after an hour of runs.
  grid = {}
  try:
    check_best_model(first)
    for name in tuned:
      grid[name] = {"learning_rate": lr_grid(args, config_of(name, args.sweep_seed, 0.0).learning_rate)}
      grid[name]["rho"] = rho_grid(name, args)
      for lr in grid[name]["learning_rate"]:
        for rho in grid[name]["rho"] or [None]:
          point = {"learning_rate": lr, **({"rho": rho} if rho is not None else {})}
          validate(config_of(name, args.sweep_seed, args.label_noise[0], point), num_devices=mesh.size)
    for name in args.optimizers:
      validate(
        config_of(name, args.seeds[0], args.label_noise[0], sharpness=not args.no_sharpness), num_devices=mesh.size
      )
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  os.makedirs(args.out, exist_ok=True)
  command = "python -m benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:])
  payload = {
    "command": command,
    "commands": [command],
    "config": os.path.relpath(os.path.abspath(args.config), os.getcwd()),
    "config_name": os.path.basename(args.config),
    "optimizers": args.optimizers,
    "seeds": args.seeds,
    "label_noise_levels": args.label_noise,
    "label_noise_seed": args.label_noise_seed,
    "validation_fraction": args.validation_fraction,
    "epochs": epochs,
    "eval_every_epochs": args.eval_every_epochs,
    "sharpness_rho": None if args.no_sharpness else first.sharpness_rho,
    "sharpness_num_iters": first.sharpness_num_iters,
    "overrides": {"rho": args.rho, "learning_rate": args.lr, "weight_decay": args.weight_decay},
    "sweep": None
    if args.no_sweep
    else {
      "seed": args.sweep_seed,
      "criteria": list(CRITERIA),
      "lr_factors": args.lr_factors,
      "msam_rho_grid": args.msam_rho_grid,
      "msam_rho_grid_adamw_lion": args.msam_rho_grid_adamw_lion,
      "sam_rho_grid": args.sam_rho_grid,
      "tuned": tuned,
      "grid": grid,
      "runs": [],
      "chosen": {},
    },
    "estimate": estimate(plan),
    "environment": {**environment(), "niceness": os.nice(0)},
    "load_average_start": os.getloadavg(),
    "runs": [],
  }
  reusable = merge_previous(payload, results_path, args.optimizers) if args.merge else {}
  e = payload["estimate"]
  print(
    f"{e['runs_min']}-{e['runs_max']} runs (--dry_run lists them), about {e['minutes_min']:.0f}-"
    f"{e['minutes_max']:.0f} minutes; {payload['epochs']:g} epochs each, on {payload['environment']['device']};"
    f" writing {args.out}",
    flush=True,
  )
  start = time.time()
  done = [0]

  def obtain(config, records: list, what: str, **extra) -> dict:
    """The run of `config`: reused from --merge's results.json if there, else trained; saved at once."""
    key = run_key(config)
    record = reusable.pop(key, None)
    if record is None:
      print(f"[{what}] {key}: training...", flush=True)
      record = train_one(config, mesh)
      done[0] += 1
    else:
      print(f"[{what}] {key}: finished earlier, reused", flush=True)
    record.update(extra)
    records.append(record)
    write_json(results_path, payload)  # partial results survive a crash; --merge continues them
    print_run(record)
    print(f"  {done[0]} runs trained in {(time.time() - start) / 60:.1f} min", flush=True)
    return record

  for noise in args.label_noise:
    level = level_key(noise)
    chosen = payload["sweep"]["chosen"].setdefault(level, {}) if tuned else {}
    for name in tuned:

      def run(point, stage, name=name, noise=noise):
        config = config_of(name, args.sweep_seed, noise, point)
        return obtain(
          config, payload["sweep"]["runs"], f"sweep, noise {noise:g}, {name}, {stage}", point=point, stage=stage
        )

      start_lr = chosen[BASE_OPTIMIZER[name]]["early_stopped"]["learning_rate"] if rho_grid(name, args) else None
      chosen[name] = tune(grid[name]["learning_rate"], grid[name]["rho"], run, start_lr)
      print(f"  noise {noise:g}, {name} chose: {chosen[name]}", flush=True)
    for seed in args.seeds:
      for name in args.optimizers:
        for point, columns in reported_points(chosen.get(name) or {c: {} for c in CRITERIA}):
          config = config_of(name, seed, noise, point, sharpness=not args.no_sharpness)
          obtain(config, payload["runs"], f"noise {noise:g}, seed {seed}, {'/'.join(columns)}", chosen_by=columns)
  payload["load_average_end"] = os.getloadavg()
  payload["total_seconds"] = time.time() - start
  write_report(args.out, payload, args.dpi)
  print()
  print(open(os.path.join(args.out, "table.md")).read())
  return payload
