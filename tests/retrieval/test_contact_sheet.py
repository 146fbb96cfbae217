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
