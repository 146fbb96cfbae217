"""The table panels draw the report's numbers, not something near them."""

import numpy as np
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from experiments.tables import plots


def _section():
  def row(name, qps, recall):
    return {"name": name, "stats": {"qps": {"mean": qps[0], "std": qps[1]},
                                    "recall": {"mean": recall[0], "std": recall[1]}}}
  return {"columns": [{"key": "qps", "label": "queries/s", "x": None},
                      {"key": "recall", "label": "recall", "x": None}],
          "rows": [row("exact", (100.0, 5.0), (1.0, 0.0)),
                   row("approximate", (2000.0, 50.0), (0.95, 0.01))]}


def test_scatter_puts_each_row_at_its_mean_with_its_std():
  axes = Figure().add_subplot()
  plots.scatter(axes, _section(), {"columns": ("qps", "recall"), "xlabel": "", "ylabel": ""},
                plots.row_colours([_section()]))
  # Each errorbar container holds (point, caps, [x bar, y bar]).
  points = [container.lines[0].get_xydata()[0] for container in axes.containers]
  np.testing.assert_allclose(points, [[100.0, 1.0], [2000.0, 0.95]])
  assert [t.get_text() for t in axes.get_legend().get_texts()] == ["exact", "approximate"]
  assert (axes.get_xlabel(), axes.get_ylabel()) == ("queries/s", "recall")
  # The second row's x bar spans its mean ± std.
  x_bar = axes.containers[1].lines[2][0].get_segments()[0]
  np.testing.assert_allclose(x_bar[:, 0], [1950.0, 2050.0])


def test_every_panel_kind_is_registered_by_name():
  assert set(plots.PANELS) == {"bars", "curves", "scatter"}


def test_a_row_keeps_its_colour_across_sections():
  # objectives: the Procrustes rows come third in one section and fourth in the other.
  first, second = _section(), _section()
  second["rows"].insert(0, {**second["rows"][0], "name": "regression"})
  colours = plots.row_colours([first, second])
  drawn = {}
  for section in (first, second):
    axes = Figure().add_subplot()
    plots.bars(axes, section, {"columns": ("recall",)}, colours)
    bar_sets = [c for c in axes.containers if isinstance(c, BarContainer)]
    for name, patches in zip([r["name"] for r in section["rows"]], bar_sets, strict=True):
      drawn.setdefault(name, set()).add(tuple(patches.patches[0].get_facecolor()))
  assert all(len(faces) == 1 for faces in drawn.values()), drawn
  assert len({next(iter(faces)) for faces in drawn.values()}) == 3  # Three distinct rows.


def test_the_title_counts_seeds_per_row_while_a_table_fills_in():
  def section(*ns):
    return {"rows": [{"name": str(i), "stats": {"r": {"n": n}}} for i, n in enumerate(ns)]}
  assert plots.seeds_label([section(3, 3), section(3)]) == "3 seeds"
  assert plots.seeds_label([section(1)]) == "1 seed"
  assert plots.seeds_label([section(2, 2, 1)]) == "1–2 seeds per row"
