"""The comparison's command line: its flags, their defaults and their checks."""

import argparse
import functools
import os
import tempfile

from benchmarks import compare
from benchmarks.compare.configs import DEFAULT_LR, DEFAULT_RHO, DEFAULT_WEIGHT_DECAY
from benchmarks.compare.entries import DEFAULT_OPTIMIZERS, OPTIMIZERS
from benchmarks.compare.sweep import (
  DEFAULT_LR_FACTORS,
  DEFAULT_MSAM_RHO_GRID,
  DEFAULT_MSAM_RHO_GRID_ADAMW_LION,
  DEFAULT_SAM_RHO_GRID,
  SWEEP_SEED,
)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "digits.py")
DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results", "compare_digits_tuned")
DEFAULT_SEEDS = "0,1,2,3,4"
DEFAULT_LABEL_NOISE = "0,0.2,0.4"


def parse_list(text: str, flag: str, choices=None) -> list[str]:
  """'a,b,c' -> ['a', 'b', 'c']; ValueError naming `flag` if empty, repeated or not in `choices`."""
  items = [s.strip() for s in text.split(",") if s.strip()]
  if not items:
    raise ValueError(f"{flag} is empty; give a comma-separated list.")
  if len(set(items)) != len(items):
    raise ValueError(f"{flag}={text!r} names an entry twice.")
  if choices is not None:
    for item in items:
      if item not in choices:
        raise ValueError(f"{flag}: {item!r} is not valid; choose from {', '.join(choices)}.")
  return items


def parse_seeds(text: str) -> list[int]:
  """'0,1,2' -> [0, 1, 2]; ValueError for anything but non-negative integers."""
  seeds = parse_list(text, "--seeds")
  try:
    values = [int(s) for s in seeds]
  except ValueError:
    raise ValueError(f"--seeds={text!r}: seeds must be non-negative integers, e.g. 0,1,2.") from None
  if any(v < 0 for v in values):
    raise ValueError(f"--seeds={text!r}: seeds must be non-negative integers, e.g. 0,1,2.")
  return values


def parse_numbers(text: str, flag: str, *, low: float, high: float | None = None, low_open=False) -> list[float]:
  """'0,0.2,0.4' -> [0.0, 0.2, 0.4]; ValueError naming `flag` unless each is in [low, high).

  `low_open`: (low, high) instead; no `high`: no upper bound.
  """
  items = parse_list(text, flag)
  interval = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else format(high, 'g')})"
  try:
    values = [float(s) for s in items]
  except ValueError:
    raise ValueError(f"{flag}={text!r}: give comma-separated numbers in {interval}.") from None
  for v in values:
    if not (v > low if low_open else v >= low) or (high is not None and not v < high):
      raise ValueError(f"{flag}={text!r}: {v:g} is not in {interval}.")
  return values


def parse_overrides(text: str, flag: str) -> dict[str, float]:
  """'msam=0.3,sam=0.05' -> {'msam': 0.3, 'sam': 0.05}; '' -> {}."""
  overrides = {}
  for item in (s.strip() for s in text.split(",")):
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or name not in OPTIMIZERS:
      raise ValueError(f"{flag}: {item!r} is not optimizer=value with an optimizer from {', '.join(OPTIMIZERS)}.")
    try:
      number = float(value)
    except ValueError:
      raise ValueError(f"{flag}: {item!r} has a value that is not a number.") from None
    if not number >= 0:
      raise ValueError(f"{flag}: {item!r} must be a non-negative number.")
    overrides[name] = number
  return overrides


def config_loader(path: str):
  """The config file's `get_config`: each call returns a fresh config (`msam_jax.training.config.load_file`)."""
  from msam_jax.training import config as config_lib  # config helpers only: no jax backend

  if not os.path.isfile(path):
    raise ValueError(f"--config={path!r} is not a file; give a path such as configs/digits.py.")
  return functools.partial(config_lib.load_file, path)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=compare.__doc__.split("\n", 1)[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file defining get_config()")
  parser.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS))
  parser.add_argument("--seeds", default=DEFAULT_SEEDS)
  parser.add_argument("--label_noise", default=DEFAULT_LABEL_NOISE, help="noise levels in [0, 1), e.g. 0,0.2,0.4")
  parser.add_argument("--label_noise_seed", type=int, default=0, help="which examples are corrupted (all runs)")
  parser.add_argument(
    "--validation_fraction", type=float, default=0.1, help="of the training split, held out for the sweep"
  )
  parser.add_argument("--no_sweep", action="store_true", help="use --rho / --lr as given, choose nothing")
  parser.add_argument("--sweep_seed", type=int, default=SWEEP_SEED, help="the sweep's seed (never reported)")
  parser.add_argument("--msam_rho_grid", default=DEFAULT_MSAM_RHO_GRID, help="msam's rho grid")
  parser.add_argument(
    "--msam_rho_grid_adamw_lion", default=DEFAULT_MSAM_RHO_GRID_ADAMW_LION, help="adamw_msam's and lion_msam's"
  )
  parser.add_argument("--sam_rho_grid", default=DEFAULT_SAM_RHO_GRID, help="the SAM family's (sam_late's too)")
  parser.add_argument(
    "--lr_factors", default=DEFAULT_LR_FACTORS, help="the learning rates swept: these times each base's centre"
  )
  parser.add_argument("--epochs", type=int, default=None, help="overrides the config's num_epochs")
  parser.add_argument("--steps", type=int, default=None, help="overrides the number of steps (quick checks)")
  parser.add_argument(
    "--eval_every_epochs",
    type=int,
    default=1,
    help="evaluate (test, validation, noisy train) every N epochs: the early-stopped model is the best of these",
  )
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--rho", default=DEFAULT_RHO, help="per optimizer, e.g. msam=0.3,sam=0.05 (with --no_sweep)")
  parser.add_argument("--lr", default=DEFAULT_LR, help="per-optimizer learning rate (the sweep's centre)")
  parser.add_argument("--weight_decay", default=DEFAULT_WEIGHT_DECAY, help="per-optimizer weight decay")
  parser.add_argument(
    "--no_sharpness",
    action="store_true",
    help="skip the sharpness probes of the reported runs (the sweep never probes)",
  )
  parser.add_argument(
    "--compilation_cache",
    default=os.path.join(tempfile.gettempdir(), "msam_jax_compare_cache"),
    help="JAX's persistent compilation cache: runs that differ only in seed or label noise compile"
    " the same programs, so later runs load them ('' to compile every run afresh)",
  )
  parser.add_argument("--dpi", type=int, default=80)
  parser.add_argument(
    "--merge",
    action="store_true",
    help="continue OUT/results.json (same settings): its finished runs are reused, not trained again,"
    " and its other optimizers' runs reported beside this invocation's",
  )
  parser.add_argument(
    "--report_only", action="store_true", help="train nothing: rewrite the table and plots from OUT/results.json"
  )
  parser.add_argument(
    "--dry_run", action="store_true", help="train nothing: list every run this command would make, and its cost"
  )
  args = parser.parse_args(argv)
  try:
    args.optimizers = parse_list(args.optimizers, "--optimizers", OPTIMIZERS)
    args.seeds = parse_seeds(args.seeds)
    args.label_noise = parse_numbers(args.label_noise, "--label_noise", low=0.0, high=1.0)
    args.msam_rho_grid = parse_numbers(args.msam_rho_grid, "--msam_rho_grid", low=0.0, low_open=True)
    args.msam_rho_grid_adamw_lion = parse_numbers(
      args.msam_rho_grid_adamw_lion, "--msam_rho_grid_adamw_lion", low=0.0, low_open=True
    )
    args.sam_rho_grid = parse_numbers(args.sam_rho_grid, "--sam_rho_grid", low=0.0, low_open=True)
    args.lr_factors = parse_numbers(args.lr_factors, "--lr_factors", low=0.0, low_open=True)
    if not 0 <= args.validation_fraction < 1:
      raise ValueError(f"--validation_fraction={args.validation_fraction:g} must be in [0, 1).")
    if args.label_noise_seed < 0:
      raise ValueError(f"--label_noise_seed={args.label_noise_seed} must be a non-negative integer.")
    if not args.no_sweep and not args.report_only:
      if args.validation_fraction == 0:
        raise ValueError("the sweep scores on the validation split: give --validation_fraction > 0 or --no_sweep.")
      if args.sweep_seed in args.seeds:
        raise ValueError(f"--sweep_seed={args.sweep_seed} is one of --seeds; the sweep's seed is never reported.")
    args.rho = parse_overrides(args.rho, "--rho")
    args.lr = parse_overrides(args.lr, "--lr")
    args.weight_decay = parse_overrides(args.weight_decay, "--weight_decay")
    for flag in ("epochs", "steps", "eval_every_epochs"):
      if getattr(args, flag) is not None and getattr(args, flag) < 1:
        raise ValueError(f"--{flag}={getattr(args, flag)} must be a positive integer.")
    if args.merge and args.report_only:
      raise ValueError("--merge trains: give --merge or --report_only, not both.")
    args.get_config = config_loader(args.config)
    args.config_lr = args.get_config().learning_rate
  except ValueError as e:
    parser.error(str(e))
  return args
