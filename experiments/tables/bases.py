"""The base configs the tables share, full and quick.

Shared on purpose: a row that means the same model in two tables (InfoNCE on
glyphs in "objectives" and the noise-free row elsewhere; the plain concat model
in "fusion" and "robustness") resolves to the same config, hence the same cell
key, and is trained once (runner.cached_result looks in every table's folder).

Step counts are chosen so that a table's full grid (3 seeds) fits in about two
hours on the 2-core CPU machine (quickstart ≈ 0.35 s per step there, shapes at
batch 64 ≈ 0.3 s; see each table's full_run_estimate).
"""

from __future__ import annotations

from experiments.tables.spec import Base

QUICKSTART = "experiments/configs/quickstart.py"
SHAPES = "experiments/configs/shapes.py"
TINY = "experiments/configs/tiny.py"

GLYPH_STEPS = 800  # Of quickstart's 1500: most of its recall, half the time.
SHAPES_STEPS = 600
# openmoji/full: 3,186 training emoji at 64×64 RGB, 12 steps of 256 an epoch; a
# quickstart step there takes 2.6 s on 2 cores (7× a glyph step), so 16 epochs.
OPENMOJI_STEPS = 200
SHAPES_BATCH = 64  # Shapes' CNN at 64×64×3 is ~4× a glyph step per example.
QUICK_STEPS = 6

# The multi-task setting of issue 8's shapes tables: classify the first shape's colour
# from the fused (caption, image) pair, with image–text matching on the same fusion.
MULTITASK = {"model.fusion": "concat", "task.label": "color1", "loss.task_weight": 1.0,
             "loss.matching_weight": 1.0}


def glyphs(quick: bool, steps: int = GLYPH_STEPS) -> Base:
  """unicode_glyphs: quickstart at `steps`, or tiny.py (unicode_glyphs/tiny)."""
  if quick:
    return Base(TINY, {"train.steps": QUICK_STEPS})
  return Base(QUICKSTART, {"train.steps": steps})


def openmoji(quick: bool, steps: int = OPENMOJI_STEPS) -> Base:
  """openmoji on quickstart's model (emoji on white, so its grey normalisation fits):
  openmoji/full at `steps`, or tiny.py on openmoji/tiny."""
  data = {"data.name": "openmoji", "data.config": "tiny" if quick else "full"}
  if quick:
    return Base(TINY, {**data, "train.steps": QUICK_STEPS})
  return Base(QUICKSTART, {**data, "train.steps": steps})


def shapes_multitask(quick: bool) -> Base:
  """shapes + MULTITASK: experiments/configs/shapes.py, or tiny.py on shapes/tiny."""
  if quick:
    return Base(TINY, {"data.name": "shapes", "data.config": "tiny",
                       "train.steps": QUICK_STEPS, **MULTITASK})
  return Base(SHAPES, {"train.steps": SHAPES_STEPS, "train.batch_size": SHAPES_BATCH,
                       **MULTITASK})
