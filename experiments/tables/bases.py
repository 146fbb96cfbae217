"""The base configs the tables share, full and quick.

Shared on purpose: a row that means the same model in two tables (e.g. InfoNCE on glyphs in
"objectives" and "robustness") resolves to the same cell key and is trained once.
"""

from __future__ import annotations

from experiments.tables.spec import Base

QUICKSTART = "experiments/configs/quickstart.py"
SHAPES = "experiments/configs/shapes.py"
TINY = "experiments/configs/tiny.py"

GLYPH_STEPS = 800  # Of quickstart's 1500: most of its recall, half the time.
SHAPES_STEPS = 600
# 16 epochs of openmoji/full (12 steps of 256 an epoch); a step costs ~7 glyph steps.
OPENMOJI_STEPS = 200
SHAPES_BATCH = 64  # Shapes' CNN at 64×64×3 is ~4× a glyph step per example.
QUICK_STEPS = 6

# The shapes tables' multi-task setting: classify the first shape's colour from the fused
# (caption, image) pair, with image–text matching on the same fusion.
MULTITASK = {"model.fusion": "concat", "task.label": "color1", "loss.task_weight": 1.0,
             "loss.matching_weight": 1.0}


def glyphs(quick: bool, steps: int = GLYPH_STEPS) -> Base:
  """unicode_glyphs: quickstart at `steps`, or tiny.py (unicode_glyphs/tiny)."""
  return Base(TINY if quick else QUICKSTART, {"train.steps": QUICK_STEPS if quick else steps})


def openmoji(quick: bool, steps: int = OPENMOJI_STEPS) -> Base:
  """openmoji/full on quickstart's model at `steps`, or tiny.py on openmoji/tiny.

  Emoji are on white, so quickstart's grey normalisation fits."""
  return Base(TINY if quick else QUICKSTART, {"data.name": "openmoji",
                                              "data.config": "tiny" if quick else "full",
                                              "train.steps": QUICK_STEPS if quick else steps})


def shapes_multitask(quick: bool) -> Base:
  """shapes + MULTITASK: experiments/configs/shapes.py, or tiny.py on shapes/tiny."""
  if quick:
    return Base(TINY, {"data.name": "shapes", "data.config": "tiny",
                       "train.steps": QUICK_STEPS, **MULTITASK})
  return Base(SHAPES, {"train.steps": SHAPES_STEPS, "train.batch_size": SHAPES_BATCH,
                       **MULTITASK})
