"""Cell kinds: what computes one (config, seed) cell of a table, chosen by name.

A kind is a function `run(cell) -> flat metrics` plus the command that reruns one cell by
hand. The training kind goes through what `launch.py --mode=all` does, so a table's numbers
are the launcher's. Bump a kind's `version` when its metrics change meaning: cached cells of
the old version are then recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from mmalign.registry import Registry

DIRECTIONS = ("text_to_image", "image_to_text")


@dataclasses.dataclass
class Cell:
  """One (config, seed) of a table, keyed by the hash of both (runner.cell_key)."""
  table: str
  kind: str
  config: ml_collections.ConfigDict  # Resolved: base + overrides + seed + data_dir.
  seed: int
  params: dict[str, Any]
  key: str
  directory: str  # <workdir_root>/<table>/<key>: cell.json and the cell's workdir.

  @property
  def workdir(self) -> str:
    return os.path.join(self.directory, "workdir")

  @property
  def result_path(self) -> str:
    return os.path.join(self.directory, "cell.json")


@dataclasses.dataclass(frozen=True)
class CellKind:
  run: Callable[[Cell], dict[str, float]]
  # Rerun by hand, with {config} the base config, {overrides} its flags, {workdir} a new dir.
  command: str
  version: int = 1
  note: str = ""  # What the command does not cover.


CELL_KINDS: Registry[CellKind] = Registry("table cell kind")


def register_kind(name: str, *, command: str, version: int = 1, note: str = ""):
  """Decorator: `@register_kind("name", command=...)` on `run(cell) -> metrics`."""
  def decorator(run):
    CELL_KINDS.register(name)(CellKind(run, command, version, note))
    return run
  return decorator


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
  """{"a": {"b": 1}} → {"a/b": 1.0}: numbers only (strings, lists and None are dropped)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, f"{name}/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[name] = float(value)
  return out


def training_throughput(workdir: str) -> dict[str, float]:
  """Median examples/s and steps/s of the logged intervals after the first (compilation)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  records = records[1:] or records
  if not records:
    return {}
  return {key: float(np.median([r[key] for r in records]))
          for key in ("examples_per_s", "steps_per_s") if all(key in r for r in records)}


def step_memory(workdir: str) -> dict[str, float]:
  """{"step_temp_bytes"}: the train step's XLA scratch per device (trainer.STEP_MEMORY)."""
  path = os.path.join(workdir, "step_memory.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {"step_temp_bytes": float(json.load(f)["temp_bytes"])}


@register_kind("train_eval", command="python launch.py --config={config} "
               "--workdir={workdir} {overrides}")
def train_and_evaluate(cell: Cell) -> dict[str, float]:
  """launch.py --mode=all without the example search; "train/seconds" includes evaluation."""
  from mmalign import experiment as experiment_lib  # pylint: disable=import-outside-toplevel
  from mmalign import run as run_lib  # pylint: disable=import-outside-toplevel

  started = time.perf_counter()
  outcome = run_lib.train_and_evaluate(experiment_lib.for_training(cell.config, cell.workdir))
  train_s = time.perf_counter() - started
  metrics = flatten({d: outcome.results["retrieval"][d] for d in DIRECTIONS})
  if "classification" in outcome.results:
    metrics.update(flatten(outcome.results["classification"], "classification/"))
  metrics.update({f"train/{k}": v for k, v in {**training_throughput(cell.workdir),
                                                **step_memory(cell.workdir)}.items()})
  metrics.update({"train/seconds": train_s, "train/steps": float(outcome.step)})
  return metrics


@register_kind("procrustes", command="python -m experiments.procrustes_baseline "
               "--config={config} {overrides}")
def procrustes(cell: Cell) -> dict[str, float]:
  """experiments/procrustes_baseline.py's rows as `<family>/<alignment>/<direction>/...`.

  family: "frozen" (random towers) or "tfidf_pca"; alignment: "none" or "procrustes"."""
  from experiments import procrustes_baseline  # pylint: disable=import-outside-toplevel
  report = procrustes_baseline.run(cell.config, workdir=cell.workdir,
                                   out_dir=os.path.join(cell.workdir, "procrustes"),
                                   split=cell.config.eval.split)
  metrics = {}
  for row in report["rows"]:
    family = "frozen" if row["embeddings"].startswith("frozen") else "tfidf_pca"
    prefix = f"{family}/{row['alignment'].lower()}/"
    metrics.update(flatten({d: row[d] for d in DIRECTIONS}, prefix))
  metrics.update(flatten(report["chance"], "chance/"))
  return metrics


def prefix_view(prefix: str):
  """A Row.view: the metrics under `prefix`, with the prefix cut off."""
  return lambda m: {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}
