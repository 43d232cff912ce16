"""table.md: one table per noise level, and the notes that say what its columns measure."""

from benchmarks.compare.entries import BASE_OPTIMIZER, DROPPED, MESA_OPTIMIZERS
from benchmarks.compare.runs import column_runs, level_key, noise_levels, noise_of


def _cell(stat: dict, fmt: str, scale: float = 1.0) -> str:
  if stat is None or stat["mean"] is None:
    return "n/a"
  if stat["n"] == 1:
    return format(scale * stat["mean"], fmt)
  return f"{format(scale * stat['mean'], fmt)} ± {format(scale * stat['std'], fmt)}"


def _difference_cell(paired: dict | None, name: str) -> str:
  """'+0.56 [-0.12, +1.24]' (percentage points, 95 % t-interval) or why there is none."""
  if BASE_OPTIMIZER[name] == name:
    return "– (base)"
  d = (paired or {}).get(name)
  if d is None or d["mean"] is None:
    return f"n/a ({BASE_OPTIMIZER[name]} not run)"
  if d["low"] is None:
    return f"{100 * d['mean']:+.2f} (one seed)"
  return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def _hparams_cell(runs: list[dict], name: str) -> str:
  """'lr 0.1, rho 3': the values `name`'s runs trained with ('–' when it has none here)."""
  own = [r for r in runs if r["optimizer"] == name]
  lrs = sorted({r["learning_rate"] for r in own})
  rhos = sorted({r["rho"] for r in own if r.get("rho") is not None})
  text = ", ".join(f"{k} {'/'.join(f'{v:g}' for v in vs)}" for k, vs in (("lr", lrs), ("rho", rhos)) if vs)
  return text or "–"


def markdown_table(summary: dict, runs: list[dict], paired: dict | None = None) -> str:
  """One noise level's table: one row per optimizer, mean ± std over its seeds, both columns (CRITERIA).

  `summary` and `paired`: this level's, column -> optimizer -> ...; `runs`: this level's runs (rows included).
  """
  header = (
    "| optimizer | final: hyper-parameters | final: test accuracy (%) | final: Δ vs base (pp, 95 % CI) | "
    "early-stopped: hyper-parameters | early-stopped: epoch | early-stopped: test accuracy (%) | "
    "early-stopped: Δ vs base (pp, 95 % CI) | validation accuracy, final / early-stopped (%) | "
    "noisy-train accuracy, final / early-stopped (%) | Hessian max eigenvalue | time per step (ms) | "
    "time per step vs base |"
  )
  num_columns = header.count("|") - 1
  lines = [header, "|---|" + "---:|" * (num_columns - 1)]
  paired = paired or {}
  final, stopped = summary.get("final", {}), summary.get("early_stopped", {})
  final_runs, stopped_runs = column_runs(runs, "final"), column_runs(runs, "early_stopped")
  for name in dict.fromkeys(list(final) + list(stopped)):
    f, e = final.get(name), stopped.get(name)
    timing = f or e
    base = BASE_OPTIMIZER[name]
    ratio = (
      "1 (base)"
      if base == name
      else (
        f"{_cell(timing['time_per_step_vs_base'], '.2f')} × {base}"
        if timing["time_per_step_vs_base"]["mean"] is not None
        else f"n/a ({base} not run)"
      )
    )
    cells = [
      name,
      _hparams_cell(final_runs, name) if f else "n/a",
      _cell(f and f["final_eval_accuracy"], ".2f", 100),
      _difference_cell(paired.get("final"), name) if f else "n/a",
      _hparams_cell(stopped_runs, name) if e else "n/a",
      _cell(e and e["best_epoch"], ".1f"),
      _cell(e and e["best_eval_accuracy"], ".2f", 100),
      _difference_cell(paired.get("early_stopped"), name) if e else "n/a",
      f"{_cell(f and f['final_validation_accuracy'], '.2f', 100)} / "
      f"{_cell(e and e['best_validation_accuracy'], '.2f', 100)}",
      f"{_cell(f and f['final_noisy_train_accuracy'], '.2f', 100)} / "
      f"{_cell(e and e['best_noisy_train_accuracy'], '.2f', 100)}",
      _cell(timing["final_hessian_max_eigenvalue"], ".2f"),
      _cell(timing["seconds_per_step"], ".1f", 1000),
      ratio,
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _format(value) -> str:
  return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def table_notes(payload: dict) -> str:
  """What the table's columns measure, and under which settings and machine load."""
  runs, env = payload["runs"], payload["environment"]
  other = {}  # the optimizer-specific config fields (DEFAULT_FIELDS, late SAM's, MESA's), grouped
  for r in runs:
    if r.get("fields"):
      other.setdefault(tuple(sorted(r["fields"].items())), []).append(r["optimizer"])
  fields = "; ".join(
    f"{', '.join(dict.fromkeys(names))}: {', '.join(f'{k} {_format(v)}' for k, v in items)}"
    for items, names in other.items()
  )
  decays = {}
  for r in runs:
    decays.setdefault(r["weight_decay"], []).append(r["optimizer"])
  decay = "; ".join(f"{', '.join(dict.fromkeys(names))}: {wd:g}" for wd, names in decays.items())
  load = f"load average {payload['load_average_start'][0]:.1f} at the start"
  if payload.get("load_average_end"):
    load += f", {payload['load_average_end'][0]:.1f} at the end"
  sharpness = (
    "not measured"
    if payload["sharpness_rho"] is None
    else "top Hessian eigenvalue at the end of training (final choice's runs), at the unperturbed parameters,"
    " on one fixed training batch"
  )
  levels = noise_levels(runs)
  noise = (
    f"Label noise {', '.join(level_key(v) for v in levels)} (symmetric: that fraction of the training labels"
    f" replaced by another class, the same examples for every optimizer and seed: label_noise_seed"
    f" {payload.get('label_noise_seed', 0)}; realised fractions {_realised(runs)})."
    if any(levels)
    else "No label noise."
  )
  validation = (
    f"Validation: {payload['validation_fraction']:g} of the training split (fixed, stratified, clean labels),"
    " held out of training."
    if payload.get("validation_fraction")
    else "No validation split."
  )
  left_out = [n for n in DROPPED if n not in payload["optimizers"]]
  ema = any(r["optimizer"] in MESA_OPTIMIZERS for r in runs)
  return "\n".join(
    [
      f"{payload['config_name']}, {payload['epochs']:g} epochs, evaluated every epoch, seeds "
      f"{', '.join(str(s) for s in payload['seeds'])}; mean ± sample std over seeds.",
      f"{noise} {validation}",
      sweep_notes(payload),
      "Final: the model at the end of training, with the hyper-parameters chosen by the final validation"
      " accuracy. Early-stopped: the model of the evaluation with the best validation accuracy (ties: lower"
      " validation loss; the training loop's best_model_metric), with the hyper-parameters chosen by that"
      " best validation accuracy; its epoch, test, validation and noisy-train accuracy are that evaluation's."
      " When both choices agree the same runs fill both columns.",
      "Δ vs base: mean over seeds of (test accuracy - the base optimizer's of the same seed, noise level and"
      " column, each with its own chosen hyper-parameters), percentage points, with the 95 % Student-t interval"
      " over those seeds; sam_late's and sgd+mesa's base is sgd. Noisy-train accuracy: the training split"
      " (validation excluded) evaluated against the labels it trained with; at noise > 0, high values mean the"
      " corrupted labels were memorised.",
      (
        "sgd+mesa EMA: the same runs as sgd+mesa, evaluated with MESA's EMA model at the end of training"
        " (SAF reports the EMA); it has no early-stopped model. "
        if ema
        else ""
      )
      + f"Weight decay: {decay}."
      + (f" Other fields: {fields}." if fields else "")
      + (
        f" Not in this comparison (CPU budget; their noisy-label rows, untuned, are in"
        f" benchmarks/results/compare_digits_noise): {', '.join(left_out)}."
        if left_out
        else ""
      ),
      f"Sharpness: {sharpness}.",
      "Time per step: median over epochs of epoch time / steps (per-epoch evaluation included), the first and"
      " last epoch left out; vs base: the ratio to the base optimizer's run of the same seed and column, mean ±"
      " std over seeds.",
      f"Machine: one {env['platform']} device ({env['device']}), {env['cpu_count']} cores,"
      f" jax {env.get('jax', '?')}; {load}.",
    ]
  )


def _realised(runs: list[dict]) -> str:
  """'0.2: 0.203, 0.4: 0.405': the fraction of training labels each level changed."""
  realised = {}
  for r in runs:
    if noise_of(r) and r.get("label_noise_realised_fraction") is not None:
      realised[noise_of(r)] = r["label_noise_realised_fraction"]
  return ", ".join(f"{level_key(k)}: {v:.3f}" for k, v in sorted(realised.items())) or "not recorded"


def sweep_notes(payload: dict) -> str:
  """How each optimizer's hyper-parameters were chosen: the staged sweep, its grids, the two criteria."""
  sweep = payload.get("sweep")
  if not sweep:
    return "Hyper-parameters: fixed (--rho, --lr), not swept in this comparison; both columns are the same runs."
  grids = "; ".join(
    f"{name}: "
    + ", ".join(f"{k.replace('learning_rate', 'lr')} {'/'.join(f'{v:g}' for v in vs)}" for k, vs in g.items() if vs)
    for name, g in sweep["grid"].items()
  )
  return (
    f"Hyper-parameters chosen on the validation split, separately at each noise level, by runs at seed"
    f" {sweep['seed']} (not reported), never on the test split, in stages: each base (sgd, adamw, lion) and"
    " sgd+mesa sweep the learning rate; each sharpness-aware optimizer sweeps rho at its base's early-stopped"
    " choice of learning rate, then the other learning rates at the rho each criterion chose. Each column's"
    " choice is the best of its optimizer's sweep runs by its criterion: the final validation accuracy (ties:"
    " lower final validation loss) or the best validation accuracy over training (ties: lower validation loss"
    f" there). Grids: {grids}."
  )
