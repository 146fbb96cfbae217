"""The table panels draw the report's numbers, not something near them."""

import numpy as np
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
  plots.scatter(axes, _section(), {"columns": ("qps", "recall"), "xlabel": "", "ylabel": ""})
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
