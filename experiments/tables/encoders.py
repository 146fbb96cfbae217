"""Table 5, encoders: retrieval and training speed per text and per image tower.

One factor at a time around the quickstart model (bag of words + CNN, InfoNCE on
unicode_glyphs/full): the text tower varies with the CNN fixed, at GLYPH_STEPS (so its
bag-of-words row is objectives' InfoNCE cell); the image tower with the bag of words fixed,
at the shorter IMAGE_STEPS, since ResNet and ViT steps cost many CNN steps on CPU (hence
the section's own CNN row). Throughput is only comparable between cells run one at a time
(--parallel=1) on an otherwise idle machine.
"""

from __future__ import annotations

from experiments.tables import bases
from experiments.tables.objectives import RECALL_1_10, RETRIEVAL_COLUMNS
from experiments.tables.spec import Column, Panel, Row, Section, Table

TEXT = {"bag of words": "bag_of_words", "LSTM (bidirectional)": "lstm",
        "Transformer (2 layers)": "transformer"}
IMAGE = {"CNN": "cnn", "ResNet-18 (width 32)": "resnet", "ViT-Ti (patch 4)": "vit"}
IMAGE_STEPS = 300
QUICK = {"text": ("bag of words", "LSTM (bidirectional)"), "image": ("CNN", "ViT-Ti (patch 4)")}

COLUMNS = RETRIEVAL_COLUMNS + (
    Column("train/examples_per_s", "train examples/s", fmt="int"),
)


def _section(name: str, title: str, choices: dict[str, str], key: str, quick: bool,
             steps: int) -> Section:
  rows = tuple(Row(n, {key: value}) for n, value in choices.items()
               if not quick or n in QUICK[name])
  data = "unicode_glyphs/tiny" if quick else "unicode_glyphs/full"
  recall = tuple(c.key for c in RECALL_1_10)
  return Section(
      name=name, base=bases.glyphs(quick, steps), rows=rows, columns=COLUMNS,
      title=f"{title} ({data} test)",
      panels=(Panel("bars", recall, f"{title}: recall", ylabel="recall"),
              Panel("bars", ("train/examples_per_s",), f"{title}: training speed",
                    ylabel="examples / s", ylim=None)))


def sections(quick: bool) -> list[Section]:
  return [_section("text", "Text towers, image tower CNN", TEXT, "model.text_encoder", quick,
                   bases.GLYPH_STEPS),
          _section("image", "Image towers, text tower bag of words", IMAGE,
                   "model.image_encoder", quick, IMAGE_STEPS)]


TABLE = Table(
    name="encoders", title="Encoders: retrieval and training speed",
    sections=sections, seeds=3,
    full_run_estimate=("~4.5 h in four parts: `--sections=text` ~1.3 h (9 trainings × "
                       f"{bases.GLYPH_STEPS} steps, 3 shared with objectives); "
                       f"`--sections=image` ~3.2 h (9 × {IMAGE_STEPS} steps; a cell takes "
                       "~3 min with the CNN, ~21 with ResNet-18, ~39 with ViT-Ti), run as "
                       "`--seeds=1`, `--seeds=2`, then the default 3, ~1.1 h each"))
