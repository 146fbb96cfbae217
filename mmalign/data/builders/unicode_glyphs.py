"""unicode_glyphs: characters drawn by matplotlib's fonts, named by Unicode.

A real image–text dataset that needs no download: every character that one of
the DejaVu or STIX faces shipped inside matplotlib can draw, rendered in grey at
32×32, paired with its official Unicode name ("latin small letter a with
grave"). Several faces draw most characters, so each name has several images.
Splits are by code point: no test name is ever seen in training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mmalign.data import glyph_render
from mmalign.data.images import png_bytes
from mmalign.data.registry import register_dataset
from mmalign.data.split import split_of

IMAGE_SIZE = 32
# The tiny config: Latin-1 Supplement and Latin Extended-A (accented letters, whose names
# compose from few words), drawn by two faces.
TINY_CODE_POINTS = range(0x00C0, 0x0180)
TINY_FACES = ("DejaVuSans.ttf", "DejaVuSerif.ttf")


@dataclasses.dataclass
class GlyphConfig(tfds.core.BuilderConfig):
  code_points: tuple[int, int] | None = None  # [start, stop) or None for all.
  faces: tuple[str, ...] = glyph_render.FACES


@register_dataset("unicode_glyphs")
class UnicodeGlyphs(tfds.core.GeneratorBasedBuilder):
  """Unicode characters rendered by matplotlib's fonts, captioned by their names."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      GlyphConfig(name="tiny", description="Latin-1 and Latin Extended-A, two faces.",
                  code_points=(TINY_CODE_POINTS.start, TINY_CODE_POINTS.stop),
                  faces=TINY_FACES),
      GlyphConfig(name="full", description="Every drawable named character, every face."),
  ]
  DEFAULT_CONFIG_NAME = "tiny"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
            "caption": tfds.features.Text(),
            "group": np.int64,  # The code point.
            "font": tfds.features.Text(),
        }),
        homepage="https://matplotlib.org",
        license=("Glyphs: DejaVu fonts license (Bitstream Vera derivative) and SIL Open Font "
                 "License 1.1 (STIX), both shipped in matplotlib/mpl-data/fonts/ttf. "
                 "Names: the Unicode Character Database via Python's unicodedata "
                 "(Unicode License v3)."),
        citation="The Unicode Standard; DejaVu Fonts; STIX Fonts.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {split: self._generate_examples(split) for split in ("train", "validation", "test")}

  def _generate_examples(self, split: str):
    config: GlyphConfig = self.builder_config
    for code_point, name, faces in glyph_render.drawable_characters(config.faces):
      wanted = not config.code_points or config.code_points[0] <= code_point < config.code_points[1]
      if not wanted or split_of(f"U+{code_point:04X}") != split:
        continue
      for face in faces:
        pixels = glyph_render.render_glyph(code_point, face, IMAGE_SIZE)
        if pixels is None:
          continue
        yield f"{code_point:06X}/{face}", {
            "image": png_bytes(pixels), "caption": name, "group": code_point,
            "font": face.removesuffix(".ttf"),
        }
