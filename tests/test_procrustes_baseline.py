"""experiments/procrustes_baseline.py end to end on unicode_glyphs/tiny."""

import json
import os
import subprocess
import sys

import pytest

from experiments import procrustes_baseline
from experiments.configs import tiny
from mmalign.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope="module")
def contrastive_eval(tmp_path_factory) -> str:
  """A stand-in for the evaluator's eval_test.json (the fields the script reads)."""
  path = str(tmp_path_factory.mktemp("eval") / "eval_test.json")
  metrics = {"recall@1": 0.5, "recall@5": 0.75, "recall@10": 1.0, "median_rank": 2.0}
  with open(path, "w") as f:
    json.dump({"dataset": "unicode_glyphs/tiny", "split": "test", "step": 6,
               "text_to_image": metrics, "image_to_text": metrics}, f)
  return path


@pytest.mark.slow  # ~15 s: a subprocess that imports JAX and embeds the tiny splits.
def test_command_writes_every_row_and_report(tiny_data_dir, contrastive_eval, tmp_path):
  """The real command line (flags, config overrides), as results.md will quote it."""
  out_dir = str(tmp_path / "out")
  command = [sys.executable, "-m", "experiments.procrustes_baseline",
             "--config=experiments/configs/tiny.py", f"--config.data.data_dir={tiny_data_dir}",
             f"--workdir={tmp_path / 'workdir'}", f"--out_dir={out_dir}",
             f"--contrastive_eval={contrastive_eval}"]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "frozen random encoders: embedding" in done.stdout  # Progress lines.
  for name in ("results.json", "results.md", "recall.png"):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0
  with open(os.path.join(out_dir, "results.json")) as f:
    saved = json.load(f)
  assert [(r["embeddings"].split(" (")[0], r["alignment"]) for r in saved["rows"]] == [
      ("frozen random encoders", "none"), ("frozen random encoders", "Procrustes"),
      ("TF-IDF / pixel PCA", "none"), ("TF-IDF / pixel PCA", "Procrustes"),
      ("trained contrastive", "trained")]
  assert saved["num_text_queries"] == 21 and saved["gallery_images"] == 42
  assert saved["fit_pairs"] == 284 and saved["pca_dim"] == 32
  for row in saved["rows"]:
    for direction in ("text_to_image", "image_to_text"):
      recalls = [row[direction][f"recall@{k}"] for k in (1, 5, 10)]
      assert all(0.0 <= r <= 1.0 for r in recalls) and recalls == sorted(recalls)
  assert saved["rows"][0]["text_to_image"]["num_queries"] == 21
  assert saved["rows"][0]["image_to_text"]["num_queries"] == 42
  with open(os.path.join(out_dir, "results.md")) as f:
    markdown = f.read()
  assert ("`python -m experiments.procrustes_baseline --config=experiments/configs/tiny.py"
          in markdown)
  assert "| chance |" in markdown and "JAX" in markdown


def test_contrastive_eval_of_another_split_is_refused(tiny_data_dir, contrastive_eval,
                                                      tmp_path):
  with pytest.raises(UsageError, match="this run unicode_glyphs/tiny validation"):
    procrustes_baseline.run(_config(tiny_data_dir), workdir=str(tmp_path / "w"),
                            out_dir=str(tmp_path / "o"), split="validation",
                            contrastive_eval=contrastive_eval)


def test_scoring_on_the_fitting_split_is_refused(tiny_data_dir, tmp_path):
  with pytest.raises(UsageError, match="held-out split"):
    procrustes_baseline.run(_config(tiny_data_dir), workdir=str(tmp_path / "w"),
                            out_dir=str(tmp_path / "o"), split="train")
