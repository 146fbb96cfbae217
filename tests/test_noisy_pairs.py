"""experiments/noisy_pairs.py: one model per noise fraction, a table and a plot."""

import json

from experiments import noisy_pairs
from experiments.configs import tiny


def test_sweep_writes_one_row_per_fraction(tiny_data_dir, tmp_path):
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  report = noisy_pairs.run(config, fractions=[0.0, 0.5], steps=3,
                           workdir_root=str(tmp_path / "runs"), out_dir=str(tmp_path / "out"),
                           command="python -m experiments.noisy_pairs --steps=3")
  assert [row["noisy_pair_fraction"] for row in report["rows"]] == [0.0, 0.5]
  assert all(row["step"] == 3 for row in report["rows"])
  with open(tmp_path / "out" / "results.json") as f:
    written = json.load(f)["rows"]
  # The JSON is the report itself, and every recall is a fraction.
  assert [row["text_to_image"] for row in written] == [
      row["text_to_image"] for row in report["rows"]]
  assert all(0.0 <= row["text_to_image"]["recall@1"] <= 1.0 for row in written)
  markdown = (tmp_path / "out" / "results.md").read_text()
  assert "| 50% |" in markdown and "--steps=3" in markdown
  assert (tmp_path / "out" / "recall.png").stat().st_size > 1000
