"""Combines the parts of the tuned comparison (run as parallel processes) into one report.

    PYTHONPATH=. python benchmarks/results/compare_digits_tuned/combine.py /tmp/tuned_A /tmp/tuned_B \
        --out benchmarks/results/compare_digits_tuned

Each part is a `benchmarks/compare_optimizers.py --out` folder of the same config, epochs,
seeds and validation split (`compare_optimizers.combine` checks it). A sweep run that
several parts made (a base's, swept by each part that tunes one of its variants) is
reported once, its copies kept under "duplicate_runs" with a check that they are identical;
then `write_report` draws table.md and the plots.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # benchmarks/, for compare_optimizers

import compare_optimizers as compare


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("parts", nargs="+", help="compare_optimizers.py output folders")
  parser.add_argument("--out", default=HERE)
  args = parser.parse_args()
  parts = []
  for folder in args.parts:
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
      raise SystemExit(f"{path} does not exist: give compare_optimizers.py --out folders.")
    with open(path) as f:
      parts.append(json.load(f))
  payload = compare.combine(parts)
  for conflict in payload["chosen_conflicts"]:
    print(f"warning: the parts chose differently for {conflict['optimizer']} at noise {conflict['label_noise']}")
  bad = [d["run_key"] for d in payload["duplicate_runs"] if not d["same_accuracy_as_reported"]]
  if bad:
    print(f"warning: runs made twice differ: {', '.join(bad)}")
  os.makedirs(args.out, exist_ok=True)
  compare.write_report(args.out, payload)
  print(open(os.path.join(args.out, "table.md")).read())


if __name__ == "__main__":
  main()
