"""The README's evidence table, made from the tuned comparison's results.json (tests/test_docs.py
checks that README.md holds exactly this table; print it with `python tests/evidence.py`)."""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUNED = ROOT / "benchmarks" / "results" / "compare_digits_tuned"
COLUMNS = {"final": "final", "early_stopped": "early-stopped"}
BASES = ("sgd", "adamw", "lion")


def _mean_std(stat: dict) -> str:
  return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _difference(d: dict) -> str:
  if d["low"] is None:
    return f"{100 * d['mean']:+.2f} ({d['n']} seed)"
  return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def complete_levels(results: dict) -> list[str]:
  """The noise levels at which every optimizer of the comparison has every seed in both columns (a
  comparison stopped early reports only those)."""

  def complete(summary: dict, name: str) -> bool:
    f, e = summary["final"].get(name), summary["early_stopped"].get(name)
    n = len(results["seeds"])
    return bool(f and e) and f["final_eval_accuracy"]["n"] == n and e["best_eval_accuracy"]["n"] == n

  return [level for level, s in results["summary"].items() if all(complete(s, n) for n in results["optimizers"])]


def table(results: dict | None = None) -> str:
  """Test accuracy of each base and each optimizer's paired difference to its base, per noise level
  and column: final model (chosen on the final validation accuracy) and early-stopped (the best
  model on validation, chosen on the best validation accuracy)."""
  if results is None:
    results = json.loads((TUNED / "results.json").read_text())
  levels = complete_levels(results)
  header = ["optimizer"] + [f"noise {level}: {title}" for level in levels for title in COLUMNS.values()]
  lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  listed = [x for n in results["optimizers"] for x in (n, n + " EMA")]  # MESA's EMA model after its run
  names = [n for n in listed if any(n in results["summary"][lv]["final"] for lv in levels)]
  for name in [n for n in names if n in BASES] + [n for n in names if n not in BASES]:
    cells = []
    for level in levels:
      for column in COLUMNS:
        if name in BASES:
          key = "final_eval_accuracy" if column == "final" else "best_eval_accuracy"
          cells.append(_mean_std(results["summary"][level][column][name][key]))
        else:
          paired = results["paired_vs_base"][level][column].get(name)
          cells.append("–" if paired is None else _difference(paired))
    base = None if name in BASES else results["paired_vs_base"][levels[0]]["final"][name]["base"]
    label = f"`{name}` test accuracy (%)" if base is None else f"`{name}` − `{base}` (points)"
    lines.append("| " + " | ".join([label, *cells]) + " |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(table())
