"""Combines the parts of a comparison (run as parallel processes) into one report.

    python -m benchmarks.compare.combine /tmp/tuned_A /tmp/tuned_B --out benchmarks/results/compare_digits_tuned

Each part is a `python -m benchmarks.compare --out` folder of the same config, epochs,
seeds and validation split (`combine` checks it). A sweep run that several parts made
(a base's, swept by each part that tunes one of its variants) is reported once, its
copies kept under "duplicate_runs" with a check that they are identical; then
`write_report` draws table.md and the plots.
"""

import argparse
import json
import os

from benchmarks.compare.entries import OPTIMIZERS
from benchmarks.compare.flags import DEFAULT_OUT
from benchmarks.compare.merge import SHARED_SETTINGS
from benchmarks.compare.report import write_report
from benchmarks.compare.runs import noise_of


def combine(parts: list[dict]) -> dict:
  """One comparison's payload from the results.json of its parts (parallel processes, same settings).

  A run both parts made (the same run_key: a base's sweep that each part ran for its
  variants) is reported once; the copies are kept under "duplicate_runs" with whether
  their accuracies are identical (training is deterministic). Choices of the same
  optimizer and noise level that differ between parts are listed under "chosen_conflicts".
  """
  first = parts[0]
  for part in parts[1:]:
    for key in SHARED_SETTINGS:
      if part.get(key) != first.get(key):
        raise SystemExit(f"parts differ in {key}: {first.get(key)!r} vs {part.get(key)!r}")
  seen, duplicates = {}, []
  runs, sweep_runs = [], []
  for part in parts:
    for records, out in ((part["runs"], runs), (((part.get("sweep") or {}).get("runs")) or [], sweep_runs)):
      for r in records:
        key = r.get("run_key") or json.dumps([r["optimizer"], r["seed"], noise_of(r), r.get("learning_rate")])
        if key in seen:
          same = all(r.get(k) == seen[key].get(k) for k in ("final_eval_accuracy", "best_eval_accuracy"))
          duplicates.append({**r, "same_accuracy_as_reported": same})
        else:
          seen[key] = r
          out.append(r)
  sweeps = [p["sweep"] for p in parts if p.get("sweep")]
  sweep, conflicts = None, []
  if sweeps:
    sweep = {**{k: v for k, v in sweeps[0].items() if k not in ("runs", "chosen", "grid", "tuned")}}
    sweep.update(runs=sweep_runs, chosen={}, grid={}, tuned=[])
    for s in sweeps:
      sweep["tuned"] += [n for n in s["tuned"] if n not in sweep["tuned"]]
      sweep["grid"].update(s["grid"])
      for level, chosen in s["chosen"].items():
        for name, choice in chosen.items():
          earlier = sweep["chosen"].setdefault(level, {}).setdefault(name, choice)
          if earlier != choice:
            conflicts.append({"label_noise": level, "optimizer": name, "kept": earlier, "other": choice})
  names = {r["optimizer"] for r in runs}
  return {
    **{k: first.get(k) for k in ("config", "config_name", "sharpness_num_iters") + SHARED_SETTINGS},
    "command": [c for p in parts for c in p.get("commands", [p["command"]])],
    "label_noise_levels": sorted({noise_of(r) for r in runs}),
    "optimizers": [n for n in OPTIMIZERS if n in names],
    "sweep": sweep,
    "chosen_conflicts": conflicts,
    "environment": first["environment"],
    "load_average_start": first["load_average_start"],
    "load_average_end": first.get("load_average_end"),
    "parts": [
      {
        k: p.get(k)
        for k in (
          "commands",
          "optimizers",
          "label_noise_levels",
          "environment",
          "load_average_start",
          "load_average_end",
          "total_seconds",
          "estimate",
        )
      }
      for p in parts
    ],
    "runs": runs,
    "duplicate_runs": duplicates,
  }


def main():
  parser = argparse.ArgumentParser(prog="python -m benchmarks.compare.combine", description=__doc__.split("\n", 1)[0])
  parser.add_argument("parts", nargs="+", help="`python -m benchmarks.compare --out` folders")
  parser.add_argument("--out", default=DEFAULT_OUT)
  args = parser.parse_args()
  parts = []
  for folder in args.parts:
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
      raise SystemExit(f"{path} does not exist: give `python -m benchmarks.compare --out` folders.")
    with open(path) as f:
      parts.append(json.load(f))
  payload = combine(parts)
  for conflict in payload["chosen_conflicts"]:
    print(f"warning: the parts chose differently for {conflict['optimizer']} at noise {conflict['label_noise']}")
  bad = [d["run_key"] for d in payload["duplicate_runs"] if not d["same_accuracy_as_reported"]]
  if bad:
    print(f"warning: runs made twice differ: {', '.join(bad)}")
  os.makedirs(args.out, exist_ok=True)
  write_report(args.out, payload)
  print(open(os.path.join(args.out, "table.md")).read())


if __name__ == "__main__":
  main()
