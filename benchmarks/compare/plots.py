"""The PNGs: accuracy against epoch, time and label noise, sharpness; one colour per optimizer throughout."""

import statistics

from benchmarks.compare.entries import OPTIMIZERS
from benchmarks.compare.runs import column_runs, level_key, noise_levels, noise_of


# Fixed, so an optimizer has the same colour in every plot and every output folder
# (registry order; optimizers beyond the palette reuse it from the start).
PALETTE = (
  "#1f77b4",
  "#d62728",
  "#ff7f0e",
  "#bcbd22",
  "#8c564b",
  "#2ca02c",
  "#9467bd",
  "#e377c2",
  "#7f7f7f",
  "#17becf",
  "#aec7e8",
  "#ffbb78",
  "#98df8a",
  "#ff9896",
  "#000000",
  "#c49c94",
  "#393b79",
)
COLORS = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(OPTIMIZERS)}


def _new_figure(width: float, height: float):
  """A figure drawn by the Agg backend, without touching pyplot's global state."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _save_png(figure, path: str, dpi: int) -> None:
  """PNG with a 256-colour palette: a fraction of the bytes, no visible change for line plots."""
  import io

  from PIL import Image

  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  buffer.seek(0)
  Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)


def mean_curves(runs: list[dict], optimizers: list[str]) -> dict:
  """optimizer -> {epoch, seconds, accuracy, accuracy_std} per evaluation, means over seeds.

  Seeds of one optimizer evaluate at the same steps; a shorter history (a run
  that stopped early) truncates the curve to the evaluations all seeds have.
  """
  curves = {}
  for name in optimizers:
    histories = [r["eval_history"] for r in runs if r["optimizer"] == name]
    if not histories:
      continue
    length = min(len(h) for h in histories)
    points = [[h[i] for h in histories] for i in range(length)]
    curves[name] = {
      "epoch": [p[0]["epoch"] for p in points],
      "seconds": [statistics.fmean(e["training_seconds"] for e in p) for p in points],
      "accuracy": [statistics.fmean(100 * e["accuracy"] for e in p) for p in points],
      "accuracy_std": [statistics.stdev([100 * e["accuracy"] for e in p]) if len(p) > 1 else 0.0 for p in points],
    }
  return curves


def plot_accuracy(curves: dict, x: str, xlabel: str, title: str, path: str, dpi: int) -> None:
  """Test accuracy (mean over seeds, band: ± std) against `x`; right panel zoomed on the end."""
  figure = _new_figure(10, 3.8)
  full, zoom = figure.subplots(1, 2)
  for axes in (full, zoom):
    for name, c in curves.items():
      low = [m - s for m, s in zip(c["accuracy"], c["accuracy_std"])]
      high = [min(m + s, 100.0) for m, s in zip(c["accuracy"], c["accuracy_std"])]
      axes.plot(c[x], c["accuracy"], color=COLORS[name], label=name, linewidth=1.5)
      axes.fill_between(c[x], low, high, color=COLORS[name], alpha=0.12, linewidth=0)
    axes.set_xlabel(xlabel)
    axes.grid(alpha=0.3)
  full.set_ylabel("test accuracy (%)")
  full.set_title(title)
  full.legend(loc="lower right", fontsize=8)
  # Zoom: the last two thirds of the evaluations, y fitted to the means there.
  x_start = min(c[x][len(c[x]) // 3] for c in curves.values())
  x_end = max(c[x][-1] for c in curves.values())
  tail = [a for c in curves.values() for a in c["accuracy"][len(c[x]) // 3 :]]
  zoom.set_xlim(x_start, x_end + 0.01 * (x_end - x_start) + 1e-9)
  zoom.set_ylim(min(tail) - 0.5, max(tail) + 0.5)
  zoom.set_title(f"zoom: {x.replace('seconds', 'time')} from {x_start:.3g}")
  _save_png(figure, path, dpi)


def plot_sharpness(runs: list[dict], summary: dict, sharpness_rho, path: str, dpi: int) -> None:
  """Bars: mean over seeds (error bar: std), dots: the seeds; one colour per optimizer."""
  figure = _new_figure(10, 3.6)
  panels = (
    ("final_sam_sharpness", f"SAM sharpness (rho={sharpness_rho})"),
    ("final_hessian_max_eigenvalue", "Hessian max eigenvalue"),
  )
  names = list(summary)
  for axes, (key, label) in zip(figure.subplots(1, 2), panels):
    for i, name in enumerate(names):
      stat = summary[name][key]
      if stat["mean"] is None:
        axes.text(i, 0, "not\nmeasured", ha="center", va="bottom", fontsize=8)
        continue
      axes.bar(i, stat["mean"], yerr=stat["std"], color=COLORS[name], capsize=3, alpha=0.85)
      axes.plot([i] * stat["n"], stat["values"], "o", color="black", markersize=3)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_title(f"{label} at the end of training")
    axes.grid(axis="y", alpha=0.3)
  _save_png(figure, path, dpi)


def plot_accuracy_vs_noise(runs: list[dict], optimizers: list[str], path: str, dpi: int) -> None:
  """Test accuracy of the final (left) and the early-stopped model (middle), memorisation (right), against noise.

  One line per optimizer through the means over seeds, error bars ± std, dots the seeds
  (offset a little sideways so that the optimizers stay apart). Each panel shows the runs of
  its column (the hyper-parameters its criterion chose); the two accuracy panels share the y axis.
  """
  figure = _new_figure(14, 4.2)
  panels = (
    ("final", "final_eval_accuracy", "final model: test accuracy (%)"),
    ("early_stopped", "best_eval_accuracy", "best-on-validation model: test accuracy (%)"),
    ("final", "final_noisy_train_accuracy", "final model: accuracy on the noisy training labels (%)"),
  )
  levels = noise_levels(runs)
  span = (levels[-1] - levels[0]) or 1.0
  names = [n for n in optimizers if any(r["optimizer"] == n for r in runs)]
  axes_list = figure.subplots(1, 3)
  axes_list[1].sharey(axes_list[0])
  for axes, (column, key, label) in zip(axes_list, panels):
    own = column_runs(runs, column)
    for i, name in enumerate(names):
      shift = span * 0.012 * (i - (len(names) - 1) / 2)
      xs, means, stds = [], [], []
      for level in levels:
        values = [
          100 * r[key] for r in own if r["optimizer"] == name and noise_of(r) == level and r.get(key) is not None
        ]
        if not values:
          continue
        xs.append(level + shift)
        means.append(statistics.fmean(values))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        axes.plot([level + shift] * len(values), values, ".", color=COLORS[name], markersize=3, alpha=0.6)
      if xs:
        axes.errorbar(xs, means, yerr=stds, color=COLORS[name], label=name, linewidth=1.3, capsize=2)
    axes.set_xlabel("label noise (fraction of training labels replaced)")
    axes.set_ylabel(label)
    axes.set_xticks(levels, [level_key(v) for v in levels])
    axes.grid(alpha=0.3)
  axes_list[0].set_title("trained to the end (mean ± std; dots: seeds)")
  axes_list[1].set_title("early-stopped on validation")
  axes_list[2].set_title("memorisation (final model)")
  axes_list[0].legend(fontsize=7, ncol=2)
  _save_png(figure, path, dpi)
