"""Every table's --quick grid end to end (tiny data, a few steps, 1 seed), so that no
table script rots: the real cell kinds train, evaluate and fill every column."""

import json

import pytest

from experiments.tables import TABLES, runner
from experiments.tables import __main__ as tables_main


@pytest.fixture(scope="module")
def cell_root(tmp_path_factory) -> str:
  """Shared by the tables, as workdirs/tables is: cells common to two tables run once."""
  return str(tmp_path_factory.mktemp("cells"))


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLES.names())
def test_quick_table_end_to_end(name, tiny_data_dir, cell_root, tmp_path, monkeypatch):
  table = TABLES.get(name)
  settings = runner.Settings(workdir_root=cell_root, quick=True, data_dir=tiny_data_dir)
  command = f"python -m experiments.tables {name} --quick"
  summary, errors = tables_main.run_table(table, settings, command=command,
                                          out_dir=str(tmp_path))
  assert not errors, errors
  for section in summary["sections"]:
    for row in section["rows"]:  # Every column of every row has its number.
      assert all(s["n"] == 1 for s in row["stats"].values()), (section["name"], row)
  markdown = (tmp_path / "results.md").read_text()
  assert command in markdown and "(quick: tiny data" in markdown
  assert all(row["name"] in markdown for s in summary["sections"] for row in s["rows"])
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["table"] == name
  assert (tmp_path / f"{name}.png").stat().st_size > 5000

  def must_not_run(*args, **kwargs):
    raise AssertionError("a cached cell ran again")
  monkeypatch.setattr(runner, "run_cell", must_not_run)
  rerun, _ = tables_main.run_table(table, settings, command=command, out_dir=str(tmp_path))
  assert rerun["sections"][0]["rows"][0]["stats"] == summary["sections"][0]["rows"][0]["stats"]
