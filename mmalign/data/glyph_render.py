"""Renders single Unicode characters from the fonts that matplotlib ships.

Kept apart from the TFDS builder so that tests and the contact sheet can render
a glyph without building a dataset.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections.abc import Iterator

import numpy as np
from fontTools import ttLib
from PIL import Image, ImageDraw, ImageFont

# Faces drawn for every character they cover. Excluded: Computer Modern (TeX encodings,
# not Unicode), STIX size/non-Unicode variants (private use), "Display" subsets, and
# LastResort (a fallback box for everything).
FACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)

# Nothing useful to draw alone: controls, format, separators, private use, surrogates, unassigned.
_SKIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def font_dir() -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@functools.lru_cache(maxsize=None)
def font_code_points(face: str) -> frozenset[int]:
  """Code points that `face` maps to a glyph of its own (so no fallback box)."""
  font = ttLib.TTFont(os.path.join(font_dir(), face), lazy=True)
  return frozenset(font.getBestCmap())


@functools.lru_cache(maxsize=None)
def _pil_font(face: str, size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(os.path.join(font_dir(), face), size)


def unicode_name(code_point: int) -> str | None:
  """The lower-cased official name, or None for unnamed/undrawable characters."""
  char = chr(code_point)
  if unicodedata.category(char) in _SKIPPED_CATEGORIES:
    return None
  name = unicodedata.name(char, None)
  return name.lower() if name else None


def render_glyph(code_point: int, face: str, size: int = 32) -> np.ndarray | None:
  """Renders one character as dark ink on white, `[size, size]` uint8.

  Glyphs share a baseline and size, so position carries meaning ("comma" vs
  "apostrophe"); one too big for the canvas is shrunk to fit and centred instead.
  Returns None when the glyph draws nothing.
  """
  char = chr(code_point)
  canvas = 4 * size  # Draw large, then downsample with antialiasing.
  font = _pil_font(face, int(canvas * 0.6))
  page = Image.new("L", (canvas, canvas), 0)
  ImageDraw.Draw(page).text((canvas // 2, int(canvas * 0.72)), char, font=font, fill=255,
                            anchor="ms")
  left, top, right, bottom = font.getbbox(char, anchor="ms")
  fits = (-canvas // 2 <= left and right <= canvas // 2 and top >= -int(canvas * 0.72)
          and bottom <= int(canvas * 0.28))
  if not fits:
    ink = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(ink).text((4 - left, 4 - top), char, font=font, fill=255, anchor="ms")
    bbox = ink.getbbox()
    if bbox is None:
      return None
    ink = ink.crop(bbox)
    scale = min(0.9 * canvas / max(ink.size), 1.0)
    ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))),
                     Image.Resampling.LANCZOS)
    page = Image.new("L", (canvas, canvas), 0)
    page.paste(ink, ((canvas - ink.width) // 2, (canvas - ink.height) // 2))
  page = page.resize((size, size), Image.Resampling.BOX)
  pixels = 255 - np.asarray(page, dtype=np.uint8)
  if pixels.min() > 245:  # A few faint pixels are not a glyph.
    return None
  return pixels


def drawable_characters(faces: tuple[str, ...] = FACES) -> Iterator[tuple[int, str, tuple[str, ...]]]:
  """Yields (code point, name, faces that cover it), in code point order."""
  covered: dict[int, list[str]] = {}
  for face in faces:
    for cp in font_code_points(face):
      covered.setdefault(cp, []).append(face)
  for cp in sorted(covered):
    name = unicode_name(cp)
    if name is not None:
      yield cp, name, tuple(covered[cp])
