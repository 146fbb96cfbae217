"""A table's grid → cells → cache → (parallel) runs → mean ± std over seeds.

Every (row, seed) resolves to one config; its cell key hashes what the cell computes
(`cell_key`), and rows with the same key share one run. Any config change but those
NOT_HASHED and NEUTRAL_DEFAULTS allow, a new key included, reruns the cells. A finished
cell leaves

  <workdir_root>/<table>/<key>/cell.json   metrics, written last and atomically
  <workdir_root>/<table>/<key>/workdir/    the launcher's workdir (checkpoints, evals)

so a rerun computes only cells whose recipe changed, an interrupted cell resumes from its
checkpoint, and a cell another table computed (same key in a sibling folder) is reused.
The cache is git-ignored; in a fresh clone the table's committed results.json stands in
for it (`previous_records`). Together they make splitting a table across sessions and
clones safe (`--sections`), but two processes must not run the same cell at once (they
would share its workdir).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import glob
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Iterable

import numpy as np

from experiments.tables import cells as cells_lib
from experiments.tables import spec
from mmalign import settings, utils
from mmalign.errors import UsageError
from mmalign.utils import say

# Keys that do not change a table's numbers (data location, ScaNN search, logging and
# checkpoint cadence): out of the key unless overridden, so adding one keeps finished cells.
NOT_HASHED = ("data.data_dir", "retrieval", "train.log_every", "train.checkpoint_every",
              "train.keep_checkpoints")
# Keys added after cells were cached, with the value that keeps the old behaviour: only
# another value (or an override) enters the key, so a new option keeps finished cells.
NEUTRAL_DEFAULTS: dict[str, object] = {
    **{key: settings.RULES[key].default for key in ("data.sampling", "train.gradient_cache_loop")},
    "init": {"checkpoint": None, "format": None, "tokenizer": None},  # Trained from scratch.
    "model.text_kwargs.clip_text": {"width": 256, "depth": 2, "heads": 4},
    "data.image_size": None, "train.learning_rate_multipliers": (),
    "data.random_crop_min_area": None, "data.random_flip": False,
    "data.features": {"image": None, "caption": None, "group": None},
    "data.splits": {"train": None, "validation": None, "test": None}}


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to run a table (the CLI's flags)."""
  workdir_root: str = "workdirs/tables"
  quick: bool = False
  seeds: int | None = None  # None: the table's default (quick_seeds with quick).
  parallel: int = 1
  data_dir: str | None = None  # Overrides config.data.data_dir; not part of the cell key.
  sections: tuple[str, ...] = ()  # Only these run; the others come from the cache or stay "—".
  # An earlier results.json, read for cells the cache lacks (previous_records); None: cache only.
  previous_results: str | None = None
  dry_run: bool = False  # List the cells and whether they are cached; run nothing.


@dataclasses.dataclass
class Plan:
  """The grid of one table: which cell every (section, row, seed) reads."""
  table: spec.Table
  sections: list[spec.Section]
  seeds: list[int]
  cells: dict[str, cells_lib.Cell]  # key → cell, each once
  keys: dict[tuple[str, int, int], str]  # (section name, row index, seed) → key
  runnable: set[str]  # Keys in the selected sections, of the seeds `--seeds` runs.
  quick: bool = False


def build_config(base: spec.Base, row: spec.Row, seed: int, data_dir: str | None = None):
  """base file + base overrides + row overrides + train.seed (+ data_dir), resolved."""
  config = spec.load_config(base.config)
  spec.apply_overrides(config, base.overrides)
  spec.apply_overrides(config, row.overrides)
  config.train.seed = seed
  if data_dir:
    config.data.data_dir = data_dir
  return config.copy_and_resolve_references()


_MISSING = object()


def _parent(tree: dict, dotted: str) -> tuple[dict, str]:
  """(the dict that holds a dotted key's last part, or {} when none does; that part)."""
  *path, last = dotted.split(".")
  for part in path:
    tree = tree.get(part, {}) if isinstance(tree, dict) else {}
  return (tree if isinstance(tree, dict) else {}), last


def cell_key(kind: str, config, seed: int, params: dict, overridden=()) -> str:
  """16 hex digits of sha256 over kind, kind version, resolved config, seed and params.

  Stable across processes. `overridden`: the dotted keys the base and row set; a NOT_HASHED
  key (or section) they touch is hashed after all, so rows differing only there stay apart.
  """
  tree = config.to_dict()
  for key in NOT_HASHED:
    if not any(o == key or o.startswith(f"{key}.") for o in overridden):
      node, last = _parent(tree, key)
      node.pop(last, None)
  for key, neutral in NEUTRAL_DEFAULTS.items():
    node, last = _parent(tree, key)
    if key not in overridden and node.get(last, _MISSING) == neutral:
      node.pop(last)
  payload = {"kind": kind, "version": cells_lib.CELL_KINDS.get(kind).version,
             "config": tree, "seed": int(seed), "params": dict(params)}
  blob = json.dumps(payload, sort_keys=True, default=repr)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def plan(table: spec.Table, settings: Settings) -> Plan:
  sections = table.sections(settings.quick)
  names = [s.name for s in sections]
  unknown = sorted(set(settings.sections) - set(names))
  if unknown:
    raise UsageError(f"--sections: table {table.name!r} has no section "
                     f"{', '.join(unknown)}; its sections: {', '.join(names)}")
  default = table.quick_seeds if settings.quick else table.seeds
  count = default if settings.seeds is None else settings.seeds
  if count < 1:
    raise UsageError(f"--seeds must be at least 1, got {count}")
  # `--seeds` limits what runs, not what is reported: a run split by seeds (`--seeds=1`
  # now, the default later) keeps the seeds another run computed.
  seeds = list(range(max(count, default)))
  cells, keys, runnable = {}, {}, set()
  for section in sections:
    for index, row in enumerate(section.rows):
      for seed in seeds:
        config = build_config(section.base, row, seed, settings.data_dir)
        key = cell_key(row.kind, config, seed, row.params,
                       overridden=[*section.base.overrides, *row.overrides])
        keys[(section.name, index, seed)] = key
        if seed < count and (not settings.sections or section.name in settings.sections):
          runnable.add(key)
        cells.setdefault(key, cells_lib.Cell(
            table=table.name, kind=row.kind, config=config, seed=seed,
            params=dict(row.params), key=key,
            directory=os.path.join(settings.workdir_root, table.name, key)))
  return Plan(table, sections, seeds, cells, keys, runnable, settings.quick)


def cached_result(workdir_root: str, table: str, key: str) -> dict | None:
  """This table's cell.json for `key`, else any other table's, else None."""
  own = os.path.join(workdir_root, table, key, "cell.json")
  for path in [own] + sorted(glob.glob(os.path.join(workdir_root, "*", key, "cell.json"))):
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
  return None


def trained_workdir(cell: cells_lib.Cell) -> str | None:
  """The workdir of any table's finished train_eval cell with this cell's config and seed
  (its checkpoint is this cell's model, e.g. objectives' InfoNCE row), or None."""
  key = cell_key("train_eval", cell.config, cell.seed, {})
  root = os.path.dirname(os.path.dirname(cell.directory))
  found = sorted(glob.glob(os.path.join(root, "*", key, "cell.json")))
  workdir = os.path.join(os.path.dirname(found[0]), "workdir") if found else ""
  return workdir if os.path.isdir(workdir) else None


def previous_records(path: str | None) -> dict[str, dict]:
  """Records by key rebuilt from an earlier report's results.json; {} if there is none.

  The report holds shown metrics (after the view), so a rebuilt record is marked `shown`
  and keeps them per row (`shown_by_row`): rows sharing a key may show different views.
  """
  if not path or not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      report = json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise UsageError(f"previous results {path}: not readable as JSON ({error}); move it "
                     "away to run without it") from error
  records: dict[str, dict] = {}
  for section in report.get("sections", []):
    for row in section.get("rows", []):
      for seed, key in row.get("cells", {}).items():
        shown = row.get("per_seed", {}).get(seed)
        if shown is None:
          continue  # That cell was not computed for the earlier report either.
        record = records.setdefault(key, {
            "key": key, "seed": int(seed), "shown": True, "shown_by_row": {},
            "seconds": row.get("seconds", {}).get(seed),
            "date": row.get("dates", {}).get(seed, report.get("date")), "previous": path})
        record["shown_by_row"][f"{section.get('name')}/{row.get('name')}"] = shown
  return records


def run_cell(cell: cells_lib.Cell, kind: cells_lib.CellKind | None = None) -> dict:
  """Computes one cell and stores its record; the entry point of worker processes too.

  A worker is handed `kind` itself (its function pickles by module and name), so a
  kind registered outside experiments/tables (a test's) runs there as well.
  """
  if kind is None:
    importlib.import_module("experiments.tables")  # Registers every table's cell kinds.
    kind = cells_lib.CELL_KINDS.get(cell.kind)
  started = time.perf_counter()
  metrics = kind.run(cell)
  record = {"key": cell.key, "table": cell.table, "kind": cell.kind, "seed": cell.seed,
            "params": cell.params, "config": json.loads(cell.config.to_json_best_effort()),
            "metrics": metrics, "seconds": time.perf_counter() - started,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  utils.write_json(cell.result_path, record)
  return record


def _describe(plan_: Plan, key: str) -> str:
  """"section/row (seed s)" of the first grid position that reads `key`."""
  for (section_name, index, seed), k in plan_.keys.items():
    if k == key:
      section = next(s for s in plan_.sections if s.name == section_name)
      return f"{section_name}: {section.rows[index].name} (seed {seed})"
  return key


def run_missing(plan_: Plan, settings: Settings) -> tuple[dict[str, dict], dict[str, str]]:
  """(records by key, errors by key): cached cells read, missing runnable ones computed.

  A cell the cache lacks is read from settings.previous_results when its key is there. A
  failing cell is reported and skipped, so one bad config does not cost the others; the
  caller decides the exit status.
  """
  previous = previous_records(settings.previous_results)
  records, errors, todo, reused = {}, {}, [], 0
  for key, cell in plan_.cells.items():
    record = cached_result(settings.workdir_root, plan_.table.name, key)
    if record is None and key in previous:
      record, reused = previous[key], reused + 1
    if record is not None:
      records[key] = record
    elif key in plan_.runnable:
      todo.append(cell)
  say(f"{plan_.table.name}: {len(plan_.cells)} cells, {len(records) - reused} cached, "
      f"{reused} from {settings.previous_results}, " * bool(reused) +
      f"{len(todo)} to run" + (f" in {settings.parallel} processes" if todo and
                              settings.parallel > 1 else ""))
  for cell in todo:
    say(f"  to run: {cell.key} {_describe(plan_, cell.key)}")
  if settings.dry_run or not todo:
    return records, errors

  def finish(position: int, cell: cells_lib.Cell, compute) -> None:
    try:
      records[cell.key] = compute()
      say(f"[{position}/{len(todo)}] done {_describe(plan_, cell.key)} "
          f"in {records[cell.key]['seconds']:.0f} s")
    except Exception:  # pylint: disable=broad-except
      errors[cell.key] = traceback.format_exc()
      say(f"[{position}/{len(todo)}] FAILED {_describe(plan_, cell.key)}:\n{errors[cell.key]}")

  if settings.parallel <= 1:
    for position, cell in enumerate(todo, 1):
      say(f"[{position}/{len(todo)}] running {_describe(plan_, cell.key)} in {cell.workdir}")
      finish(position, cell, lambda cell=cell: run_cell(cell))
    return records, errors

  context = multiprocessing.get_context("spawn")  # Each cell's JAX in a fresh process.
  with concurrent.futures.ProcessPoolExecutor(settings.parallel, mp_context=context) as pool:
    futures = {pool.submit(run_cell, cell, cells_lib.CELL_KINDS.get(cell.kind)): cell
               for cell in todo}
    for position, future in enumerate(concurrent.futures.as_completed(futures), 1):
      finish(position, futures[future], future.result)
  return records, errors


def mean_std(values: Iterable[float]) -> dict:
  """{"mean", "std", "n"}: std is the sample std (ddof=1) over seeds, 0 for one seed."""
  values = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
  if values.size == 0:
    return {"mean": None, "std": None, "n": 0}
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return {"mean": float(values.mean()), "std": std, "n": int(values.size)}


def _shown(record: dict, section: str, row: spec.Row) -> dict | None:
  """The metrics a row shows for one cell record; None if a reused record cannot say.

  A reused record holds its rows' shown metrics; a row it does not name gets them only
  when a single row showed that cell (no other view to mix up)."""
  if not record.get("shown"):
    return row.view(record["metrics"]) if row.view else record["metrics"]
  by_row = record.get("shown_by_row", {})
  name = f"{section}/{row.name}"
  if name in by_row:
    return by_row[name]
  return next(iter(by_row.values())) if len(by_row) == 1 else None


def summarize(plan_: Plan, records: dict[str, dict], *, command: str,
              failed: Iterable[str] = ()) -> dict:
  """The report: per section and row, each seed's shown metrics and their mean ± std."""
  sections = []
  for section in plan_.sections:
    column_keys = [c.key for c in section.columns]
    rows = []
    for index, row in enumerate(section.rows):
      per_seed, keys, seconds, dates = {}, {}, {}, {}
      for seed in plan_.seeds:
        key = plan_.keys[(section.name, index, seed)]
        keys[str(seed)] = key
        record = records.get(key)
        shown = None if record is None else _shown(record, section.name, row)
        if shown is not None:
          per_seed[str(seed)] = {k: shown.get(k) for k in column_keys}
          seconds[str(seed)], dates[str(seed)] = record.get("seconds"), record.get("date")
      rows.append({
          "name": row.name, "kind": row.kind, "x": row.x,
          "overrides": spec.format_overrides(row.overrides), "cells": keys,
          "per_seed": per_seed, "seconds": seconds, "dates": dates,
          "stats": {k: mean_std(m[k] for m in per_seed.values()) for k in column_keys}})
    kinds = sorted({row.kind for row in section.rows})
    sections.append({
        "name": section.name, "title": section.title, "notes": section.notes,
        "base": {"config": section.base.config,
                 "overrides": spec.format_overrides(section.base.overrides)},
        "commands": {kind: {field: getattr(cells_lib.CELL_KINDS.get(kind), field)
                            for field in ("command", "note")} for kind in kinds},
        "columns": [dataclasses.asdict(c) for c in section.columns],
        "panels": [dataclasses.asdict(p) for p in section.panels],
        "rows": rows})
  # Reported: the plan's seeds that at least one row has a result for (all if none has).
  shown = {int(seed) for section in sections for row in section["rows"]
           for seed in row["per_seed"]}
  return {"table": plan_.table.name, "title": plan_.table.title, "command": command,
          "quick": plan_.quick,
          "seeds": [seed for seed in plan_.seeds if seed in shown] or list(plan_.seeds),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "jax_version": importlib.metadata.version("jax"),
          "cell_seconds": sum(r.get("seconds") or 0.0 for r in records.values()),
          # Cells read from an earlier results.json: count, unrecorded compute, run dates.
          "reused": {"cells": sum(1 for r in records.values() if r.get("previous")),
                     "unrecorded_seconds": sum(1 for r in records.values()
                                               if r.get("seconds") is None),
                     "dates": sorted({str(r.get("date"))[:10] for r in records.values()
                                      if r.get("previous")})},
          "failed": sorted(_describe(plan_, k) for k in failed), "sections": sections}
