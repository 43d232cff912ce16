"""Writes the report: results.json (with the summaries), table.md and the plots."""

import json
import os

from benchmarks.compare.entries import EMA_SUFFIX
from benchmarks.compare.plots import mean_curves, plot_accuracy, plot_accuracy_vs_noise, plot_sharpness
from benchmarks.compare.runs import column_runs, level_key, noise_levels, noise_of
from benchmarks.compare.summary import add_time_ratios, ema_rows, paired_differences, summarize
from benchmarks.compare.sweep import CRITERIA, CRITERION_KEYS
from benchmarks.compare.table import markdown_table, table_notes


def write_json(path: str, payload: dict) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, indent=1)
  os.replace(path + ".tmp", path)


def write_report(out: str, payload: dict, dpi: int = 80) -> None:
  """table.md, results.json (with the summaries) and the PNGs from the runs in `payload`.

  `summary` and `paired_vs_base` are keyed by noise level ("0", "0.2", ...), then column
  (CRITERIA), then optimizer (with MESA's EMA model as "sgd+mesa EMA").
  """
  runs, optimizers = payload["runs"], payload["optimizers"]
  add_time_ratios(runs)
  rows = runs + ema_rows(runs)
  names = [x for n in optimizers for x in (n, n + EMA_SUFFIX) if x == n or any(r["optimizer"] == x for r in rows)]
  levels = noise_levels(runs)
  payload["summary"], payload["paired_vs_base"] = {}, {}
  sections = []
  for level in levels:
    key = level_key(level)
    level_rows = [r for r in rows if noise_of(r) == level]
    summary = {c: summarize(column_runs(level_rows, c), names) for c in CRITERIA}
    paired = {
      c: paired_differences(column_runs(level_rows, c), names, CRITERION_KEYS[c][2]).get(key, {}) for c in CRITERIA
    }
    payload["summary"][key], payload["paired_vs_base"][key] = summary, paired
    table = markdown_table(summary, level_rows, paired)
    sections.append(f"### Label noise {key}\n\n{table}" if len(levels) > 1 else table)
  write_json(os.path.join(out, "results.json"), payload)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(sections) + "\n" + table_notes(payload) + "\n")
  if len(levels) > 1:
    plot_accuracy_vs_noise(runs, optimizers, os.path.join(out, "accuracy_vs_noise.png"), dpi)
  for level in levels:
    key = level_key(level)
    level_runs = column_runs([r for r in runs if noise_of(r) == level], "final")
    suffix = f"_noise{key}" if len(levels) > 1 else ""
    title = "test accuracy (mean over seeds; final choice)" + (f", label noise {key}" if len(levels) > 1 else "")
    curves = mean_curves(level_runs, optimizers)
    plot_accuracy(curves, "epoch", "epoch", title, os.path.join(out, f"accuracy_vs_epoch{suffix}.png"), dpi)
    plot_accuracy(
      curves,
      "seconds",
      "wall-clock seconds (compilation included)",
      title,
      os.path.join(out, f"accuracy_vs_time{suffix}.png"),
      dpi,
    )
    if any(r.get("final_hessian_max_eigenvalue") is not None for r in level_runs):  # nothing to show without
      summary = payload["summary"][key]["final"]
      plot_sharpness(level_runs, summary, payload["sharpness_rho"], os.path.join(out, f"sharpness{suffix}.png"), dpi)
