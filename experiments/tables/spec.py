"""What a table is made of: sections of rows (config overrides) scored in columns.

A table holds only the recipe: per row, a base config file plus dotted overrides (as
launch.py's `--config.x=y`), the cell kind that computes it (`cells.CELL_KINDS`), and which
of that cell's metrics it shows. Rows with the same recipe are one cell, trained once: the
fusion table's "text only" and "image only" rows come out of one model.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from mmalign.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
Metrics = dict[str, float]


@dataclasses.dataclass(frozen=True)
class Base:
  """A config file (path relative to the repository) and the overrides every row shares."""
  config: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a section; `x` places it on a curve."""
  name: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  kind: str = "train_eval"
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Hashed, not config.
  # The cell's raw metrics → this row's (e.g. a classifier's text-only scores); None: as is.
  view: Callable[[Metrics], Metrics] | None = None
  x: float | None = None


@dataclasses.dataclass(frozen=True)
class Column:
  """A metric key of the rows' views; `best` "max"/"min" bolds the best mean, None never."""
  key: str
  label: str
  fmt: str = "percent"  # A key of report.FORMATS.
  best: str | None = "max"
  x: float | None = None  # Places the column on a curve whose series are the rows.


@dataclasses.dataclass(frozen=True)
class Panel:
  """One plot of a section: `kind` is a key of plots.PANELS."""
  kind: str  # "bars" | "curves" | "scatter" (columns: (x, y))
  columns: tuple[str, ...]
  title: str = ""
  xlabel: str = ""
  ylabel: str = ""
  xscale: str = "linear"
  ylim: tuple[float, float] | None = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Section:
  name: str
  title: str
  base: Base
  rows: tuple[Row, ...]
  columns: tuple[Column, ...]
  panels: tuple[Panel, ...] = ()
  notes: str = ""  # Markdown under the section title: how to read it.


@dataclasses.dataclass(frozen=True)
class Table:
  """A named table: `sections(quick)` gives the full grid, or its tiny-data version."""
  name: str
  title: str
  sections: Callable[[bool], list[Section]]
  seeds: int = 3
  quick_seeds: int = 1
  full_run_estimate: str = ""  # Run time on 2 CPU cores, printed before a full run.


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file under the repository, e.g. experiments/configs/tiny.py."""
  if not path.endswith(".py") or not os.path.exists(os.path.join(ROOT, path)):
    raise UsageError(f"config file {path!r} does not exist under {ROOT}")
  module = importlib.import_module(path[:-len(".py")].replace("/", "."))
  return module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted keys in place, as `--config.a.b=v` would; unknown keys are an error."""
  for key, value in overrides.items():
    parts, node = key.split("."), config
    for i, part in enumerate(parts):
      if part not in node:
        raise UsageError(f"--config.{key}: no such config key ({'.'.join(parts[:i + 1])!r})")
      if i < len(parts) - 1:
        node = node[part]
    setattr(node, parts[-1], value)


def format_overrides(overrides: Mapping[str, Any]) -> str:
  """`--config.a=1 --config.b=x`, in the order given, as config_flags parses them back."""
  return " ".join(f"--config.{k}={shlex.quote(v if isinstance(v, str) else repr(v))}"
                  for k, v in overrides.items())
