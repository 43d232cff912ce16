"""The executed examples of the docs gallery (docs/examples/): each runs, and the site shows what it printed.

Each example is a jupytext percent script, `docs/examples/NAME.py`, and the site renders
`NAME.ipynb`: the script executed at full length, outputs committed, never executed by the
docs build (docs/conf.py). After editing a script, regenerate its notebook (minutes):

    python -c "import jupytext, nbclient; nb = jupytext.read('docs/examples/noisy_digits.py');
    nbclient.NotebookClient(nb, timeout=None).execute(); jupytext.write(nb, 'docs/examples/noisy_digits.ipynb')"

(`pip install jupytext nbclient ipykernel`, with this checkout's msam_jax importable.)
"""

import ast
import json
import pathlib
import re
import runpy

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GALLERY = ROOT / "docs" / "examples"


def script_cells(path: pathlib.Path) -> list[tuple[str, str]]:
  """(cell type, source) of each cell of a percent script, as jupytext reads it."""
  text = path.read_text()
  text = re.sub(r"\A# ---\n.*?^# ---\n", "", text, flags=re.M | re.S)  # the jupytext header
  cells = []
  for chunk in re.split(r"^# %%", text, flags=re.M)[1:]:
    marker, _, body = chunk.partition("\n")
    if marker.strip() == "[markdown]":
      lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.strip("\n").splitlines()]
      cells.append(("markdown", "\n".join(lines).strip()))
    else:
      cells.append(("code", body.strip("\n")))
  return cells


def notebook(name: str) -> dict:
  return json.loads((GALLERY / f"{name}.ipynb").read_text())


def outputs_text(cell: dict) -> str:
  return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_every_gallery_script_has_its_notebook_in_the_site():
  index = (ROOT / "docs" / "index.md").read_text()
  scripts = sorted(p.stem for p in GALLERY.glob("*.py"))
  assert scripts == sorted(p.stem for p in GALLERY.glob("*.ipynb")) == ["noisy_digits"]
  for name in scripts:
    assert f"examples/{name}\n" in index


@pytest.mark.parametrize("name", ["noisy_digits"])
def test_the_notebook_is_its_script_executed(name):
  cells = notebook(name)["cells"]
  published = [(c["cell_type"], "".join(c["source"]).strip("\n")) for c in cells]
  assert published == script_cells(GALLERY / f"{name}.py"), f"regenerate docs/examples/{name}.ipynb ({__doc__})"
  code = [c for c in cells if c["cell_type"] == "code"]
  assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "run top to bottom, once"
  assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]


def _noisy_digits_results() -> dict:
  """The published notebook's printed results: the rho sweep and the results table."""
  text = "\n".join(outputs_text(c) for c in notebook("noisy_digits")["cells"])
  sweep = {
    name: ast.literal_eval(scores)
    for name, scores in re.findall(r"^(\w+): validation accuracy by rho (\{.*\})$", text, re.M)
  }
  chosen = ast.literal_eval(re.search(r"^chosen: (\{.*\})$", text, re.M).group(1))
  header = re.search(r"^label noise ([\d.]+), (\d+) epochs, seeds \(([\d, ]+)\)", text, re.M)
  number = r"([+-]?\d+\.\d+)"
  rows = {}
  for line in re.findall(r"^\| (?:sgd|msam|sam) \|.*$", text, re.M):
    cells = [c.strip() for c in line.strip("|").split("|")]
    values = [float(v) for v in re.findall(number, " ".join(cells[2:]))]
    rows[cells[0]] = values
  return {
    "sweep": sweep,
    "chosen": chosen,
    "noise": float(header.group(1)),
    "epochs": int(header.group(2)),
    "seeds": len(header.group(3).split(",")),
    "rows": rows,
  }


def test_the_noisy_digits_prose_states_what_its_outputs_show():
  """Every claim of the example's text, and the choosing page's sentence about it, against its printed outputs."""
  r = _noisy_digits_results()
  assert (r["noise"], r["epochs"], r["seeds"]) == (0.4, 40, 5)  # the full run, not NOISY_DIGITS_QUICK
  # A row: test mean, std, [difference to sgd, low, high,] early-stopped mean, std, noisy-train mean, std, Hessian.
  sgd, msam, sam = (r["rows"][n] for n in ("sgd", "msam", "sam"))
  test, early, memorised, hessian = (
    (lambda row: row[0]),
    (lambda row: row[-6]),
    (lambda row: row[-4]),
    (lambda r: r[-2]),
  )
  assert msam[3] > 0 and sam[3] > 0  # "far above SGD, with paired intervals well clear of zero"
  assert memorised(sgd) > 60 + 10 and memorised(msam) < memorised(sgd) - 10 and memorised(sam) < memorised(sgd) - 10
  assert early(sgd) - test(sgd) > 5  # SGD "reaches its best test accuracy early and then loses much of it"
  assert early(msam) - test(msam) < 3 and early(sam) - test(sam) < 3  # "keep most of theirs"
  # Early stopping "recovers most of SGD's loss but not all of it".
  gap = min(early(msam), early(sam)) - early(sgd)
  assert 0 < gap < early(sgd) - test(sgd)
  assert 3 * hessian(msam) < hessian(sgd) and 3 * hessian(sam) < hessian(sgd)  # "several times flatter"
  # docs/choosing.md: "MSAM at rho 3 ... leave the model at chance level, while MSAM's best was 1 and SAM's 0.3".
  assert r["chosen"] == {"msam": 1.0, "sam": 0.3}
  assert r["sweep"]["msam"][3.0] < 15 and r["sweep"]["sam"][1.0] < 15  # 10 classes: chance is about 10 %
  assert "MSAM at rho 3 and SAM at rho 1" in (ROOT / "docs" / "choosing.md").read_text()


@pytest.mark.slow  # trains 8 small MLPs for 2 epochs each (about 30 s on 2 CPU cores)
def test_noisy_digits_runs_in_its_reduced_form(monkeypatch):
  monkeypatch.setenv("NOISY_DIGITS_QUICK", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  import matplotlib

  matplotlib.use("Agg")
  ns = runpy.run_path(str(GALLERY / "noisy_digits.py"))
  assert (ns["EPOCHS"], ns["SEEDS"]) == (2, (0, 1))
  assert set(ns["runs"]) == {"sgd", "msam", "sam"} and ns["chosen_rho"] == {"msam": 0.3, "sam": 0.3}
  for name, runs in ns["runs"].items():
    assert len(runs) == 2 and all(len(history) == 2 for _, history in runs)
    accuracies = [epoch["test_accuracy"] for _, history in runs for epoch in history]
    assert 0.3 < min(accuracies) and max(accuracies) <= 1.0, (name, accuracies)  # learning, from 10 % at chance
    assert all(np.isfinite(ns["sharpness"][name])) and min(ns["sharpness"][name]) > 0
  assert set(ns["summary"]) == {"sgd", "msam", "sam"}
  assert abs(ns["flipped"].mean() - 0.4) < 0.03
