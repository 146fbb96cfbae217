"""Table 7: finding another table's trained model (the cell itself runs in test_quick.py)."""

import json
import os

from experiments.tables import bases, cells, runner
from experiments.tables.spec import Row


def _cell(root, seed=0):
  config = runner.build_config(bases.glyphs(True), Row("r", {"loss.name": "infonce"}), seed)
  return cells.Cell(table="retrieval_efficiency", kind="retrieval_efficiency", config=config,
                    seed=seed, params={"gallery": "test"}, key="k",
                    directory=os.path.join(root, "retrieval_efficiency", "k"))


def test_trained_workdir_is_a_finished_train_eval_cell_of_any_table(tmp_path):
  cell = _cell(str(tmp_path))
  assert runner.trained_workdir(cell) is None  # Nothing trained yet.
  key = runner.cell_key("train_eval", cell.config, 0, {})
  finished = tmp_path / "objectives" / key
  os.makedirs(finished / "workdir")
  assert runner.trained_workdir(cell) is None  # No cell.json: not finished.
  (finished / "cell.json").write_text(json.dumps({"metrics": {}}))
  assert runner.trained_workdir(cell) == str(finished / "workdir")
  assert runner.trained_workdir(_cell(str(tmp_path), seed=1)) != str(finished / "workdir")
