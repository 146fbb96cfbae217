"""A table report as one PNG: a row of panels per section, error bars = std over seeds.

Panels are chosen by name (spec.Panel.kind) from PANELS:
  bars    one group per column, one bar per table row;
  curves  a line per column against the rows' `x`, or, when the columns carry `x`, a line
          per row against the columns' x; the band is mean ± std over seeds;
  scatter one point per table row at (first column, second column), ± std both ways.
matplotlib's object API with Agg, as in mmalign/plots.py: no pyplot state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from mmalign.plots import save_figure


def _stat(row: dict, key: str) -> tuple[float, float]:
  """(mean, std) of one column of a row; NaN when not computed."""
  stats = row["stats"][key]
  return (np.nan, np.nan) if stats["mean"] is None else (stats["mean"], stats["std"])


def bars(axes, section: dict, panel: dict, colours: dict[str, str]) -> None:
  columns = {c["key"]: c for c in section["columns"]}
  keys, rows = panel["columns"], section["rows"]
  width = 0.8 / max(len(rows), 1)
  for i, row in enumerate(rows):
    means, stds = zip(*(_stat(row, k) for k in keys), strict=True)
    offsets = np.arange(len(keys)) + (i - (len(rows) - 1) / 2) * width
    axes.bar(offsets, means, width, yerr=stds, capsize=2, label=row["name"],
             color=colours[row["name"]])
  axes.set_xticks(np.arange(len(keys)), [columns[k]["label"] for k in keys], fontsize=8)
  axes.grid(alpha=0.3, axis="y")
  axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2)


def _line(axes, xs, stats, label: str, colour: str | None = None) -> None:
  xs = np.asarray(xs, np.float64)
  means, stds = (np.asarray(v, np.float64) for v in zip(*stats, strict=True))
  line, = axes.plot(xs, means, marker="o", label=label, color=colour)
  axes.fill_between(xs, means - stds, means + stds, color=line.get_color(), alpha=0.2,
                    linewidth=0)


def curves(axes, section: dict, panel: dict, colours: dict[str, str]) -> None:
  columns = {c["key"]: c for c in section["columns"]}
  keys, rows = panel["columns"], section["rows"]
  if all(columns[k]["x"] is not None for k in keys):  # A line per row over the columns.
    xs = [columns[k]["x"] for k in keys]
    for row in rows:
      _line(axes, xs, [_stat(row, k) for k in keys], row["name"], colours[row["name"]])
  else:  # A line per column over the rows.
    xs = [row["x"] for row in rows]
    for key in keys:
      _line(axes, xs, [_stat(row, key) for row in rows], columns[key]["label"])
  axes.set_xticks(xs, [f"{x:g}" for x in xs])  # The grid's own values, also on a log axis.
  axes.minorticks_off()
  axes.grid(alpha=0.3, which="both")
  axes.legend(fontsize=7)


def scatter(axes, section: dict, panel: dict, colours: dict[str, str]) -> None:
  columns = {c["key"]: c for c in section["columns"]}
  x_key, y_key = panel["columns"]
  for row in section["rows"]:
    (x, x_std), (y, y_std) = _stat(row, x_key), _stat(row, y_key)
    axes.errorbar([x], [y], xerr=[x_std], yerr=[y_std], marker="o", capsize=2,
                  linestyle="none", label=row["name"], color=colours[row["name"]])
  if not panel["xlabel"]:
    axes.set_xlabel(columns[x_key]["label"])
  if not panel["ylabel"]:
    axes.set_ylabel(columns[y_key]["label"])
  axes.grid(alpha=0.3, which="both")
  axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)


PANELS: dict[str, Callable[[object, dict, dict, dict], None]] = {
    "bars": bars, "curves": curves, "scatter": scatter}


def row_colours(sections: list[dict]) -> dict[str, str]:
  """Row name -> colour, one per distinct name over the whole report.

  So a row that recurs in several sections keeps its colour wherever it stands.
  """
  names = dict.fromkeys(row["name"] for s in sections for row in s["rows"])
  return {name: f"C{i % 10}" for i, name in enumerate(names)}  # matplotlib's 10-colour cycle.


def seeds_label(sections: list[dict]) -> str:
  """"3 seeds", or "1–2 seeds per row" while a table is being filled in by seeds."""
  counts = {stats["n"] for s in sections for row in s["rows"]
            for stats in row["stats"].values() if stats.get("n")}
  low, high = (min(counts), max(counts)) if counts else (0, 0)
  if low == high:
    return f"{high} seed{'s' * (high != 1)}"
  return f"{low}–{high} seeds per row"


def plot_report(report: dict, path: str) -> None:
  """Every section's panels, one figure row per section, written atomically to `path`."""
  sections = [s for s in report["sections"] if s["panels"]]
  if not sections:
    return
  width = max(len(s["panels"]) for s in sections)
  # Bar legends sit below their panel, two names a line: room for long row lists.
  legend_lines = max((len(s["rows"]) + 1) // 2 for s in sections)
  colours = row_colours(sections)
  figure = Figure(figsize=(max(5.2 * width, 7.0), (3.4 + 0.2 * legend_lines) * len(sections)),
                  layout="constrained")
  for r, section in enumerate(sections):
    for c, panel in enumerate(section["panels"]):
      axes = figure.add_subplot(len(sections), width, r * width + c + 1)
      axes.set_xscale(panel["xscale"])  # First: it resets the ticks a panel may set.
      PANELS[panel["kind"]](axes, section, panel, colours)
      if panel["ylim"] is not None:
        axes.set_ylim(*panel["ylim"])
      if panel["xlabel"]:
        axes.set_xlabel(panel["xlabel"])
      if panel["ylabel"]:
        axes.set_ylabel(panel["ylabel"])
      axes.set_title(panel["title"] or section["title"], fontsize=9)
  figure.suptitle(f"{report['title']} ({seeds_label(sections)}; band/bar: ± std)",
                  fontsize=10)
  save_figure(figure, path)
