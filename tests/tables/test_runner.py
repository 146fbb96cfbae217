"""experiments/tables: cell keys, the cache, mean ± std, bold-best and the markdown, on a
fake cell kind that trains nothing (the real kinds run in test_quick.py)."""

import json
import os
import subprocess
import sys

import pytest

from experiments.tables import TABLES, report, runner, spec
from experiments.tables import __main__ as tables_main
from experiments.tables.cells import CELL_KINDS, register_kind
from mmalign.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "experiments/configs/tiny.py"
CALLS = []  # Keys of the cells the fake kind computed in this process.


def _fake_metrics(cell):
  """A deterministic function of the config and seed, in place of a training run."""
  CALLS.append(cell.key)
  if cell.config.loss.name == "broken":
    raise RuntimeError("this cell is broken on purpose")
  bonus = 1.0 if cell.config.loss.name == "sigmoid" else 0.0
  return {"score": cell.config.train.learning_rate * 100 + cell.seed + bonus,
          "rank": 10.0 - cell.seed}


if "fake" not in CELL_KINDS:
  register_kind("fake", command="python launch.py --config={config} {overrides}")(_fake_metrics)


def _table(losses=("infonce", "sigmoid"), name="fake_table", lr=1e-3) -> spec.Table:
  columns = (spec.Column("score", "score", fmt="float3"),
             spec.Column("rank", "rank", fmt="float1", best="min"))

  def sections(quick):
    rows = tuple(spec.Row(loss, {"loss.name": loss}, kind="fake") for loss in losses)
    if quick:
      rows = rows[:1]
    return [spec.Section("main", "Main", spec.Base(TINY, {"train.learning_rate": lr}), rows,
                         columns, panels=(spec.Panel("bars", ("score",)),))]
  return spec.Table(name, "A fake table", sections, seeds=2)


def _run(table, tmp_path, **settings):
  settings = runner.Settings(workdir_root=str(tmp_path / "cells"), **settings)
  plan = runner.plan(table, settings)
  CALLS.clear()
  records, errors = runner.run_missing(plan, settings)
  return plan, records, errors


# ----------------------------------------------------------------------------------------
# Keys.
# ----------------------------------------------------------------------------------------


def _key(overrides=None, seed=0, data_dir=None, params=None, kind="fake", config=None):
  overrides = overrides or {}
  if config is None:
    config = runner.build_config(spec.Base(TINY), spec.Row("r", overrides), seed, data_dir)
  return runner.cell_key(kind, config, seed, params or {}, overridden=list(overrides))


def test_cell_key_is_stable_and_ignores_the_data_location():
  assert _key() == _key()
  assert len(_key()) == 16
  assert _key(data_dir="/somewhere/else") == _key()


def test_keys_that_change_no_number_are_not_hashed_unless_overridden():
  config = runner.build_config(spec.Base(TINY), spec.Row("r"), 0)
  config.retrieval.brand_new_search_option = 3  # A config file gains a search setting.
  config.train.log_every = 1
  assert _key(config=config) == _key()
  assert _key({"retrieval.k": 3}) != _key({"retrieval.k": 4})
  config.train.brand_new_training_option = 3  # Anything else counts.
  assert _key(config=config) != _key()


def test_new_keys_at_their_neutral_default_leave_the_key_alone(monkeypatch):
  monkeypatch.setitem(runner.NEUTRAL_DEFAULTS, "data.brand_new_sampling", "captions")
  config = runner.build_config(spec.Base(TINY), spec.Row("r"), 0)
  config.data.brand_new_sampling = "captions"  # Added later, default = old behaviour.
  assert _key(config=config) == _key()
  config.data.brand_new_sampling = "images"
  assert _key(config=config) != _key()


def test_the_init_block_at_its_defaults_leaves_the_key_alone():
  """`config.init` came after the committed tables; training from scratch keeps their keys."""
  config = runner.build_config(spec.Base(TINY), spec.Row("r"), 0)
  del config["init"]
  assert _key(config=config) == _key()
  assert _key({"init.checkpoint": "vectors.txt"}) != _key()


def test_cell_key_changes_with_overrides_seed_params_and_kind():
  keys = {_key(), _key({"loss.name": "sigmoid"}), _key({"train.steps": 7}), _key(seed=1),
          _key(params={"sizes": [4]}), _key(kind="train_eval")}
  assert len(keys) == 6


def test_cell_key_is_the_same_in_another_process():
  code = ("from tests.tables.test_runner import _key; print(_key({'loss.name': 'sigmoid'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
  assert out.stdout.strip().splitlines()[-1] == _key({"loss.name": "sigmoid"})


def test_an_override_of_a_missing_key_names_it():
  with pytest.raises(UsageError, match="loss.nmae"):
    _key({"loss.nmae": "x"})


def test_overrides_are_spelled_as_launch_flags():
  assert spec.format_overrides({"loss.name": "sigmoid", "train.steps": 800,
                                "model.image_kwargs.cnn.channels": (8, 16)}) == (
      "--config.loss.name=sigmoid --config.train.steps=800 "
      "--config.model.image_kwargs.cnn.channels='(8, 16)'")


def test_rows_with_the_same_recipe_share_one_cell():
  table = _table(losses=("infonce", "infonce"))
  plan = runner.plan(table, runner.Settings())
  assert len(plan.keys) == 4 and len(plan.cells) == 2


# ----------------------------------------------------------------------------------------
# Cache.
# ----------------------------------------------------------------------------------------


def test_cache_runs_only_what_is_missing_or_changed(tmp_path):
  plan, records, errors = _run(_table(), tmp_path)
  assert not errors and len(CALLS) == 4 == len(records)
  for key in records:
    with open(tmp_path / "cells" / "fake_table" / key / "cell.json") as f:
      assert json.load(f)["metrics"] == records[key]["metrics"]

  _, records, _ = _run(_table(), tmp_path)
  assert CALLS == [] and len(records) == 4  # A rerun computes nothing.

  _, _, _ = _run(_table(losses=("infonce", "regression")), tmp_path)
  assert len(CALLS) == 2  # Only the changed row's two seeds.

  _, _, _ = _run(_table(), tmp_path, seeds=3)
  assert len(CALLS) == 2  # Only seed 2 of the two rows.


def test_a_cell_of_another_table_is_reused(tmp_path):
  _run(_table(name="first"), tmp_path)
  _, records, _ = _run(_table(name="second"), tmp_path)
  assert CALLS == [] and len(records) == 4


def test_a_failing_cell_is_reported_and_the_others_kept(tmp_path):
  _, records, errors = _run(_table(losses=("infonce", "broken")), tmp_path)
  assert len(records) == 2 and len(errors) == 2
  assert all("broken on purpose" in e for e in errors.values())


def test_sections_not_selected_are_only_read_from_the_cache(tmp_path):
  table = _table()
  with pytest.raises(UsageError, match="no section nope"):
    runner.plan(table, runner.Settings(sections=("nope",)))
  with pytest.raises(UsageError, match="--seeds"):
    runner.plan(table, runner.Settings(seeds=0))
  _, records, _ = _run(table, tmp_path, dry_run=True)
  assert CALLS == [] and records == {}


@pytest.mark.slow
def test_parallel_cells_run_in_worker_processes(tmp_path):
  _, records, errors = _run(_table(), tmp_path, parallel=2)
  assert not errors and len(records) == 4
  assert CALLS == []  # Computed in the workers, not here.
  serial = {k: r["metrics"] for k, r in _run(_table(), tmp_path / "serial")[1].items()}
  assert {k: r["metrics"] for k, r in records.items()} == serial


# ----------------------------------------------------------------------------------------
# Aggregation and report.
# ----------------------------------------------------------------------------------------


def test_mean_std_uses_the_sample_std_and_skips_missing_values():
  assert runner.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
  assert runner.mean_std([4.0, None]) == {"mean": 4.0, "std": 0.0, "n": 1}
  assert runner.mean_std([]) == {"mean": None, "std": None, "n": 0}


def _summary(tmp_path, losses=("infonce", "sigmoid")):
  table = _table(losses=losses)
  plan, records, _ = _run(table, tmp_path)
  return runner.summarize(plan, records, command="python -m experiments.tables fake_table")


def test_summary_has_mean_and_std_over_seeds(tmp_path):
  summary = _summary(tmp_path)
  row = summary["sections"][0]["rows"][0]
  assert row["stats"]["score"] == pytest.approx({"mean": 0.6, "std": 0.7071067811865476,
                                                 "n": 2})
  assert row["overrides"] == "--config.loss.name=infonce"
  assert set(row["per_seed"]) == {"0", "1"}


def test_best_mean_is_bold_per_column_max_or_min_with_ties():
  def section(values, best):
    return {"columns": [{"key": "m", "best": best}],
            "rows": [{"stats": {"m": {"mean": v}}} for v in values]}
  assert report.best_rows(section([0.1, 0.3, 0.3, None], "max")) == {"m": {1, 2}}
  assert report.best_rows(section([5.0, 2.0, 9.0], "min")) == {"m": {1}}
  assert report.best_rows(section([5.0, 2.0], None)) == {}
  assert report.best_rows(section([5.0, None], "max")) == {}  # Nothing to compare against.


def test_markdown_names_command_overrides_and_rerun(tmp_path):
  markdown = report.format_markdown(_summary(tmp_path), "fake_table.png")
  assert "Command: `python -m experiments.tables fake_table`" in markdown
  # Score: sigmoid's is higher; rank (lower is better): a tie, both bold.
  assert ("| infonce | 0.600 ± 0.707 | **9.5 ± 0.7** | 2 | `--config.loss.name=infonce` |"
          in markdown)
  assert "| sigmoid | **1.600 ± 0.707** | **9.5 ± 0.7** | 2 |" in markdown
  assert "python launch.py --config=experiments/configs/tiny.py " \
         "--config.train.learning_rate=0.001" in markdown
  assert "![fake_table](fake_table.png)" in markdown


def test_percent_format_and_missing_cells():
  column = {"fmt": "percent"}
  assert report.format_cell(column, {"mean": 0.6379, "std": 0.012, "n": 3}, True) == (
      "**63.8 ± 1.2%**")
  assert report.format_cell(column, {"mean": 0.6379, "std": 0.0, "n": 1}, False) == "63.8%"
  assert report.format_cell(column, {"mean": None, "std": None, "n": 0}, False) == "—"


def test_run_table_writes_markdown_json_and_png(tmp_path):
  summary, errors = tables_main.run_table(
      _table(), runner.Settings(workdir_root=str(tmp_path / "cells")),
      command="python -m experiments.tables fake_table", out_dir=str(tmp_path / "out"))
  assert not errors
  with open(tmp_path / "out" / "results.json") as f:
    assert json.load(f)["sections"][0]["rows"][1]["name"] == "sigmoid"
  assert "| sigmoid |" in (tmp_path / "out" / "results.md").read_text()
  assert (tmp_path / "out" / "fake_table.png").stat().st_size > 1000
  assert summary["failed"] == []


def test_every_table_plans_full_and_quick_grids():
  for name in TABLES.names():
    table = TABLES.get(name)
    for quick in (False, True):
      plan = runner.plan(table, runner.Settings(quick=quick))
      assert plan.cells, name
      if quick:  # Keeps tests/tables/test_quick.py within minutes.
        assert len(plan.cells) <= 5, (name, len(plan.cells))
        assert all(c.config.data.config.startswith("tiny") for c in plan.cells.values()), name


def test_cli_rejects_an_unknown_table():
  result = subprocess.run([sys.executable, "-m", "experiments.tables", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "unknown table 'nope'" in result.stderr and "objectives" in result.stderr


def _doubled(metrics):
  """A view that breaks if applied twice: it derives a column from a raw metric."""
  return {**metrics, "score": None if "rank" not in metrics else metrics["score"] * 2}


def test_a_fresh_clone_reads_unchanged_cells_from_the_committed_results(tmp_path):
  """The cache is git-ignored; the committed results.json stands in for it, per cell key."""
  def table(lr, view=_doubled):
    columns = (spec.Column("score", "score", fmt="float3"),)

    def sections(quick):
      rows = (spec.Row("a", {"loss.name": "infonce"}, kind="fake", view=view),
              spec.Row("b", {"loss.name": "sigmoid", "train.learning_rate": lr}, kind="fake"))
      return [spec.Section("main", "Main", spec.Base(TINY, {}), rows, columns)]
    return spec.Table("fake_reuse", "A fake table", sections, seeds=2)

  out = tmp_path / "out"
  first, _ = tables_main.run_table(table(1e-3), runner.Settings(
      workdir_root=str(tmp_path / "session1")), command="c", out_dir=str(out))
  previous = str(out / "results.json")
  # A new session without the cache: row a is read back, row b changed and is rerun.
  settings = runner.Settings(workdir_root=str(tmp_path / "session2"), previous_results=previous)
  plan = runner.plan(table(2e-3), settings)
  CALLS.clear()
  records, errors = runner.run_missing(plan, settings)
  assert not errors and len(records) == 4
  assert sorted(CALLS) == sorted(plan.keys[("main", 1, s)] for s in (0, 1))
  second = runner.summarize(plan, records, command="c")
  row_a_before, row_a_after = first["sections"][0]["rows"][0], second["sections"][0]["rows"][0]
  # The view ran once (score doubled, not quadrupled), and seconds and dates came along.
  assert row_a_after["per_seed"] == row_a_before["per_seed"]
  tiny_lr = spec.load_config(TINY).train.learning_rate
  assert row_a_after["per_seed"]["1"]["score"] == pytest.approx((tiny_lr * 100 + 1) * 2)
  assert row_a_after["seconds"] == row_a_before["seconds"]
  assert row_a_after["dates"] == row_a_before["dates"]
  assert second["reused"]["cells"] == 2 and second["reused"]["unrecorded_seconds"] == 0
  assert second["cell_seconds"] == pytest.approx(sum(
      s for r in second["sections"][0]["rows"] for s in r["seconds"].values()))
  assert "2 cells were read from the results.json of an earlier run" in (
      report.format_markdown(second, "x.png"))
  # Without previous results, the same session would train row a again.
  plan = runner.plan(table(2e-3), runner.Settings(workdir_root=str(tmp_path / "session3")))
  CALLS.clear()
  runner.run_missing(plan, runner.Settings(workdir_root=str(tmp_path / "session3")))
  assert len(CALLS) == 4


def test_previous_results_of_older_reports_and_broken_files(tmp_path):
  legacy = {"date": "2026-11-29 15:57 UTC", "sections": [{"name": "s", "rows": [
      {"name": "text", "cells": {"0": "k0", "1": "k1"}, "per_seed": {"0": {"score": 0.5}}},
      {"name": "image", "cells": {"0": "k0"}, "per_seed": {"0": {"score": 0.9}}}]}]}
  path = tmp_path / "results.json"
  path.write_text(json.dumps(legacy))
  records = runner.previous_records(str(path))
  # k1 was never computed; k0 is one run shown two ways (text only / image only), and
  # each row gets its own view back; no per-cell seconds in older reports.
  assert list(records) == ["k0"] and records["k0"]["shown"]
  for name, score in (("text", 0.5), ("image", 0.9)):
    assert runner._shown(records["k0"], "s", spec.Row(name, {})) == {"score": score}
  assert runner._shown(records["k0"], "s", spec.Row("renamed", {})) is None
  assert records["k0"]["seconds"] is None and records["k0"]["date"].startswith("2026-11-29")
  assert runner.previous_records(str(tmp_path / "absent.json")) == {}
  path.write_text("{not json")
  with pytest.raises(UsageError, match="results.json"):
    runner.previous_records(str(path))


def test_fewer_seeds_run_fewer_but_report_every_seed_already_computed(tmp_path):
  """`--seeds=1` in a fresh clone keeps the committed seeds of every section."""
  out = tmp_path / "out"
  first, _ = tables_main.run_table(_table(), runner.Settings(
      workdir_root=str(tmp_path / "session1")), command="c", out_dir=str(out))
  assert first["seeds"] == [0, 1]
  settings = runner.Settings(workdir_root=str(tmp_path / "session2"), seeds=1,
                             previous_results=str(out / "results.json"))
  plan = runner.plan(_table(losses=("infonce", "regression")), settings)
  CALLS.clear()
  records, errors = runner.run_missing(plan, settings)
  # Only the changed row's seed 0 trains; the kept row keeps both seeds.
  assert not errors and CALLS == [plan.keys[("main", 1, 0)]]
  second = runner.summarize(plan, records, command="c")
  kept, changed = second["sections"][0]["rows"]
  assert kept["per_seed"] == first["sections"][0]["rows"][0]["per_seed"]
  assert sorted(changed["per_seed"]) == ["0"] and changed["stats"]["score"]["n"] == 1
  assert second["seeds"] == [0, 1]
  # From nothing, `--seeds=1` trains and reports seed 0 only.
  settings = runner.Settings(workdir_root=str(tmp_path / "session3"), seeds=1)
  plan = runner.plan(_table(), settings)
  CALLS.clear()
  records, _ = runner.run_missing(plan, settings)
  assert len(CALLS) == 2 and runner.summarize(plan, records, command="c")["seeds"] == [0]
