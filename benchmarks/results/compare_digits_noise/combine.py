"""Combines the parts of the noisy-label comparison (run as parallel processes) into one report.

    PYTHONPATH=. python benchmarks/results/compare_digits_noise/combine.py /tmp/ev_A /tmp/ev_B /tmp/ev_rst \
        --out benchmarks/results/compare_digits_noise

Each part is a `benchmarks/compare_optimizers.py --out` folder of the same config,
epochs and seeds. A later part's runs of an optimizer an earlier part already
holds at that noise level and seed (the SGD runs beside rst, for its time ratio)
are kept aside under "duplicate_runs" with a check that their accuracy is
identical, not reported twice. Then `write_report` redraws table.md and the plots.
"""

import argparse
import importlib.util
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "compare_optimizers.py")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("parts", nargs="+", help="compare_optimizers.py output folders")
  parser.add_argument("--out", default=HERE)
  args = parser.parse_args()
  spec = importlib.util.spec_from_file_location("compare_optimizers", SCRIPT)
  compare = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(compare)
  parts = []
  for folder in args.parts:
    with open(os.path.join(folder, "results.json")) as f:
      parts.append(json.load(f))
  first = parts[0]
  for part in parts[1:]:
    for key in ("config_name", "seeds", "epochs", "validation_fraction", "label_noise_seed"):
      if part[key] != first[key]:
        raise SystemExit(f"parts differ in {key}: {first[key]!r} vs {part[key]!r}")
  runs, duplicates, seen = [], [], {}
  for part in parts:
    for r in part["runs"]:
      key = (r["optimizer"], r["seed"], compare.noise_of(r))
      if key in seen:
        duplicates.append(
          {**r, "same_accuracy_as_reported": r["final_eval_accuracy"] == seen[key]["final_eval_accuracy"]}
        )
      else:
        seen[key] = r
        runs.append(r)
  names = {r["optimizer"] for r in runs}
  sweep = {"seed": None, "label_noise": None, "runs": [], "grid": {}, "chosen": {}}
  for part in parts:
    for s in (part.get("merged_runs") or {}).get("sweep"), part.get("sweep"):
      if s:
        for k in ("seed", "label_noise", "msam_rho_grid", "sam_rho_grid"):
          sweep[k] = s[k]
        sweep["lr_factors"] = sorted(set(sweep.get("lr_factors", [])) | set(s["lr_factors"]))
        sweep["runs"] += s["runs"]
        sweep["grid"].update(s["grid"])
        sweep["chosen"].update({k: v for k, v in s["chosen"].items() if k in s["grid"]})
  payload = {
    **{k: first[k] for k in ("config", "config_name", "seeds", "validation_fraction", "label_noise_seed", "epochs")},
    "command": [p["command"] for p in parts],
    "label_noise_levels": sorted({compare.noise_of(r) for r in runs}),
    "optimizers": [n for n in compare.OPTIMIZERS if n in names],
    "sharpness_rho": first["sharpness_rho"],
    "sweep": sweep,
    "environment": first["environment"],
    "load_average_start": first["load_average_start"],
    "load_average_end": first.get("load_average_end", first["load_average_start"]),
    "parts": [
      {
        k: p.get(k)
        for k in ("command", "optimizers", "environment", "load_average_start", "load_average_end", "total_seconds")
      }
      for p in parts
    ],
    "runs": runs,
    "duplicate_runs": duplicates,
  }
  os.makedirs(args.out, exist_ok=True)
  compare.write_report(args.out, payload)
  print(open(os.path.join(args.out, "table.md")).read())


if __name__ == "__main__":
  main()
