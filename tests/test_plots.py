"""Plots are written as PNGs, atomically, and empty inputs are refused."""

import json

import numpy as np
import pytest
from PIL import Image

from mmalign import plots


def test_training_curves_png(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("".join(json.dumps({"step": s, "loss": 1 / s, "scale": 10 + s,
                                         "learning_rate": 1e-3}) + "\n" for s in (1, 2, 3)))
  out = tmp_path / "curves.png"
  plots.plot_training_curves(str(metrics), str(out))
  with Image.open(out) as image:
    assert image.format == "PNG"
  assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_training_curves_refuse_empty_log(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("")
  with pytest.raises(ValueError, match="no records"):
    plots.plot_training_curves(str(metrics), str(tmp_path / "x.png"))


def test_recall_curves_png(tmp_path):
  curves = {direction: {"recall": list(np.linspace(0.2, 1, 10)),
                        "chance": list(np.linspace(0, 0.5, 10))}
            for direction in ("text_to_image", "image_to_text")}
  out = tmp_path / "nested" / "recall.png"
  plots.plot_recall_curves(curves, str(out), "title")
  with Image.open(out) as image:
    assert image.format == "PNG"
