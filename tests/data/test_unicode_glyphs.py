"""unicode_glyphs: rendering, the character list, and the built tiny splits."""

import os
import socket
import unicodedata

import numpy as np
import pytest

from mmalign.data import glyph_render, sources
from mmalign.data.builders import unicode_glyphs
from mmalign.errors import UsageError

SPLITS = ("train", "validation", "test")


def _no_network(*args, **kwargs):
  raise AssertionError("the build touched the network")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Builds tiny with every socket refused, so a download attempt fails the test."""
  data_dir = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket, "getaddrinfo", _no_network)
    builder = sources.get_builder("unicode_glyphs", "tiny", str(data_dir))
    sources.ensure_built(builder)
  return builder


@pytest.fixture(scope="module")
def examples(built) -> dict[str, list[dict]]:
  out = {}
  for split in SPLITS:
    source = sources.open_split(built, split)
    out[split] = [source[i] for i in range(len(source))]
  return out


def _expected_pairs() -> set[tuple[int, str]]:
  """(code point, face) pairs of tiny, recomputed from the renderer alone."""
  pairs = set()
  start, stop = 0x00C0, 0x0180  # Latin-1 Supplement letters and Latin Extended-A.
  for code_point, _, faces in glyph_render.drawable_characters(unicode_glyphs.TINY_FACES):
    if start <= code_point < stop:
      pairs.update((code_point, face) for face in faces
                   if glyph_render.render_glyph(code_point, face, 32) is not None)
  return pairs


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def test_tiny_config_covers_the_documented_range():
  assert unicode_glyphs.TINY_CODE_POINTS == range(0x00C0, 0x0180)
  assert set(unicode_glyphs.TINY_FACES) <= set(glyph_render.FACES)


def test_split_counts_sum_to_the_rendered_pairs(built, examples):
  expected = _expected_pairs()
  assert len(expected) > 300  # Two faces draw nearly all of the 192 code points.
  counts = {split: len(examples[split]) for split in SPLITS}
  assert all(count > 0 for count in counts.values()), counts
  assert sum(counts.values()) == len(expected)
  assert {split: built.info.splits[split].num_examples for split in SPLITS} == counts
  got = {(int(e["group"]), _text(e["font"]) + ".ttf") for split in SPLITS
         for e in examples[split]}
  assert got == expected


def test_no_caption_or_group_in_two_splits(examples):
  for key in ("caption", "group"):
    seen = {split: {_text(e[key]) for e in examples[split]} for split in SPLITS}
    for i, a in enumerate(SPLITS):
      for b in SPLITS[i + 1:]:
        assert not seen[a] & seen[b], (key, a, b)


def test_examples_are_glyphs_captioned_by_their_unicode_name(examples):
  for split in SPLITS:
    for example in examples[split]:
      image = example["image"]
      assert image.shape == (32, 32, 1) and image.dtype == np.uint8
      assert image.min() < 128 and image.max() > 200  # Dark ink on light paper.
      code_point = int(example["group"])
      assert _text(example["caption"]) == unicodedata.name(chr(code_point)).lower()


def test_decoded_image_equals_a_fresh_render(examples):
  example = examples["train"][0]
  face = _text(example["font"]) + ".ttf"
  expected = glyph_render.render_glyph(int(example["group"]), face, 32)
  np.testing.assert_array_equal(example["image"][..., 0], expected)


def test_caption_only_source_skips_decoding(built):
  source = sources.open_split(built, "validation", decode_images=False)
  assert isinstance(source[0]["image"], bytes)
  assert source[0]["image"].startswith(b"\x89PNG")


def test_unknown_split_is_a_usage_error(built):
  with pytest.raises(UsageError, match="no split 'trian'") as info:
    sources.open_split(built, "trian")
  assert "train" in str(info.value)


def test_unknown_config_lists_available_ones(tmp_path):
  with pytest.raises(UsageError, match="available: tiny, full") as info:
    sources.get_builder("unicode_glyphs", "huge", str(tmp_path))
  assert "data.config" in str(info.value)


def test_unknown_dataset_lists_registered_ones(tmp_path):
  with pytest.raises(UsageError, match="unicode_glyphs") as info:
    sources.get_builder("unicode_glyph", "tiny", str(tmp_path))
  assert "data.name" in str(info.value)


def test_every_face_ships_with_matplotlib():
  for face in glyph_render.FACES:
    assert os.path.isfile(os.path.join(glyph_render.font_dir(), face)), face


def test_full_character_list_is_large_sorted_and_named():
  characters = list(glyph_render.drawable_characters())
  assert 2000 < len(characters) < 100_000
  code_points = [cp for cp, _, _ in characters]
  assert code_points == sorted(set(code_points))
  for code_point, name, faces in characters[::97]:
    assert name == unicodedata.name(chr(code_point)).lower()
    assert faces and set(faces) <= set(glyph_render.FACES)
    assert all(code_point in glyph_render.font_code_points(face) for face in faces)


def test_unicode_name_skips_undrawable_categories():
  assert glyph_render.unicode_name(0x20) is None  # Space separator.
  assert glyph_render.unicode_name(0x0A) is None  # Control.
  assert glyph_render.unicode_name(0x200B) is None  # Zero-width space (format).
  assert glyph_render.unicode_name(0xE000) is None  # Private use.
  assert glyph_render.unicode_name(0x00E0) == "latin small letter a with grave"
  assert 0x20 not in {cp for cp, _, _ in glyph_render.drawable_characters()}


def test_render_glyph_returns_ink_on_white():
  pixels = glyph_render.render_glyph(ord("A"), "DejaVuSans.ttf", 32)
  assert pixels.shape == (32, 32) and pixels.dtype == np.uint8
  assert pixels.min() < 64 and pixels[0, 0] == 255  # Ink inside, white corner.


def test_render_glyph_of_blank_character_is_none():
  assert glyph_render.render_glyph(0x20, "DejaVuSans.ttf", 32) is None


def test_combining_character_renders_non_blank():
  pixels = glyph_render.render_glyph(0x0301, "DejaVuSans.ttf", 32)  # Combining acute.
  assert pixels is not None and pixels.min() < 200


def test_baseline_position_carries_meaning():
  """Comma and apostrophe differ mainly in height; the render must keep that."""
  def ink_rows(char):
    pixels = glyph_render.render_glyph(ord(char), "DejaVuSans.ttf", 32)
    return np.nonzero((pixels < 128).any(axis=1))[0].mean()
  assert ink_rows(",") > ink_rows("'") + 5


def test_oversized_glyph_is_shrunk_to_fit():
  code_point = 0x2031  # Per ten thousand sign: wider than the canvas at the common size.
  font = glyph_render._pil_font("DejaVuSans.ttf", int(4 * 32 * 0.6))  # pylint: disable=protected-access
  left, _, right, _ = font.getbbox(chr(code_point), anchor="ms")
  assert left < -64 or right > 64  # The premise: drawn as-is it would be clipped.
  pixels = glyph_render.render_glyph(code_point, "DejaVuSans.ttf", 32)
  assert pixels is not None and pixels.min() < 64
  assert (pixels[:, 0] == 255).all() and (pixels[:, -1] == 255).all()  # Not clipped.
