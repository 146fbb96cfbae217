"""The contact sheet is a readable PNG of the right size, and bad inputs are named."""

import numpy as np
import pytest
from PIL import Image

from mmalign.retrieval.contact_sheet import save_contact_sheet


@pytest.mark.parametrize("channels", [1, 3])
def test_writes_png_with_one_panel_per_result(tmp_path, channels):
  images = np.random.default_rng(0).integers(0, 256, (7, 16, 16, channels), np.uint8)
  path = tmp_path / "sub" / "sheet.png"
  save_contact_sheet(path, "a query", images, [f"caption {i}" for i in range(7)],
                     np.linspace(1, 0, 7), correct=[True, False] * 3 + [True])
  with Image.open(path) as sheet:
    assert sheet.format == "PNG"
    width, height = sheet.size
  assert width > 200 and height > 100


def test_mismatched_lengths_are_named(tmp_path):
  images = np.zeros((3, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match="captions"):
    save_contact_sheet(tmp_path / "x.png", "q", images, ["a", "b"], np.zeros(3))


def test_query_image_panel_comes_first(tmp_path):
  images = np.zeros((2, 8, 8, 1), np.uint8)
  query = np.full((12, 12, 1), 255, np.uint8)
  path = tmp_path / "q.png"
  save_contact_sheet(path, "image query", images, ["a", "b"], np.array([0.5, 0.1]),
                     query_image=query)
  with_query = Image.open(path).size
  save_contact_sheet(tmp_path / "plain.png", "image query", images, ["a", "b"],
                     np.array([0.5, 0.1]))
  assert with_query[0] > Image.open(tmp_path / "plain.png").size[0]  # One more column.
  with pytest.raises(ValueError, match="uint8"):
    save_contact_sheet(path, "q", images, ["a", "b"], np.zeros(2), query_image=query * 1.0)
