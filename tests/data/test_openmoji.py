"""The openmoji builder: which emoji, how they are drawn, and the built splits."""

import socket

import numpy as np
import pytest

from mmalign.data import sources
from mmalign.data.builders import openmoji
from mmalign.data.split import split_of

SPLITS = ("train", "validation", "test")


def _no_network(*args, **kwargs):
  raise AssertionError("the build touched the network")


def _build(data_dir) -> object:
  """Builds tiny with every socket refused, so a download attempt fails the test."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket, "getaddrinfo", _no_network)
    builder = sources.get_builder("openmoji", "tiny", str(data_dir))
    sources.ensure_built(builder)
  return builder


def _read(builder, split, decode_images=True) -> list[dict]:
  source = sources.open_split(builder, split, decode_images=decode_images)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("tfds"))


def test_full_list_has_known_names_and_unique_ids():
  entries = openmoji.all_emoji()
  captions = {e.caption for e in entries}
  assert len(entries) > 3000
  for name in ("grinning face", "woman cook medium-dark skin tone", "flag Germany",
               "flag England", "keycap #", "rainbow flag",
               "airplane"):  # OpenMoji's file is 2708.svg, CLDR's sequence 2708-FE0F.
    assert name in captions, name
  assert len(captions) == len(entries)
  assert len({e.sequence for e in entries}) == len(entries)
  assert len({e.group for e in entries}) == len(entries)
  cook = next(e for e in entries if e.caption == "woman cook")
  assert cook.sequence == "1F469-200D-1F373" and cook.text == "\U0001F469\u200D\U0001F373"


def test_shaper_rejects_what_the_font_cannot_draw_as_one_glyph():
  shaper = openmoji._font_shaper()
  assert shaper.single_glyph("\U0001F469\U0001F3FE\u200D\U0001F373")  # Skin tone + ZWJ.
  assert shaper.single_glyph("\U0001F1E9\U0001F1EA")  # Flag of Germany.
  assert not shaper.single_glyph("\U0001F600\U0001F600")  # Two emoji.
  assert not shaper.single_glyph("\U0001F600\u200D\U0001F600")  # No such ZWJ sequence.
  assert not shaper.single_glyph("\U0001F1E6\U0001F1E6")  # No country "AA": two glyphs.
  assert not shaper.single_glyph("\u0905")  # Not in the font: .notdef.


def test_render_fits_without_cropping():
  pixels = openmoji.render_emoji("\U0001F600")  # [64, 64, 3]
  assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
  ink = (pixels < 200).any(axis=-1)
  rows, cols = np.nonzero(ink)
  # Fills the frame (scaled to fit) but leaves the margin white (not cropped).
  assert rows.min() >= 1 and cols.min() >= 1 and rows.max() <= 62 and cols.max() <= 62
  assert rows.max() - rows.min() > 50 and cols.max() - cols.min() > 50
  yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 150) & (pixels[..., 2] < 100)
  assert yellow.mean() > 0.3  # Drawn in colour, not as a black outline.


def test_counts_add_up_to_the_selected_emoji(built):
  selected = [e for e in openmoji.all_emoji() if openmoji.in_tiny(e)]
  counts = {split: built.info.splits[split].num_examples for split in SPLITS}
  assert all(n > 0 for n in counts.values()), counts
  assert sum(counts.values()) == len(selected)  # Every selected emoji was drawn.
  for split in SPLITS:
    assert counts[split] == sum(split_of(e.sequence) == split for e in selected)


def test_no_caption_or_group_in_two_splits(built):
  seen = {}
  for split in SPLITS:
    examples = _read(built, split, decode_images=False)
    captions = {ex["caption"].decode() for ex in examples}
    groups = {ex["group"] for ex in examples}
    for other, (other_captions, other_groups) in seen.items():
      assert not captions & other_captions, (split, other)
      assert not groups & other_groups, (split, other)
    seen[split] = (captions, groups)
  all_captions = set().union(*(c for c, _ in seen.values()))
  assert "grinning face" in all_captions


def test_examples_are_drawn_and_labelled(built):
  by_sequence = {e.sequence: e for e in openmoji.all_emoji()}
  examples = _read(built, "train")[:20]
  for ex in examples:
    image = ex["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image < 200).any(axis=-1).mean() > 0.05, ex["caption"]  # Not blank.
    entry = by_sequence[ex["sequence"].decode()]
    assert ex["caption"].decode() == entry.caption
    assert ex["group"] == entry.group


def test_build_is_deterministic(built, tmp_path):
  again = _build(tmp_path)
  for split in SPLITS:
    first, second = _read(built, split), _read(again, split)
    assert len(first) == len(second)
    for a, b in zip(first, second):
      assert a["sequence"] == b["sequence"] and a["caption"] == b["caption"]
      np.testing.assert_array_equal(a["image"], b["image"])
