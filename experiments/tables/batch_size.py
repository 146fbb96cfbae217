"""Table 6, contrastive batch size: retrieval vs batch size from 64 to 16k images on CPU.

It needs `data.sampling="images"` (mmalign/data/sampling.py): the default batch holds one
image per distinct caption, so on unicode_glyphs/full it can never pass 5,838. The section's
notes say how a row trains; every cell sees the same images (EXAMPLES), so the rows compare
what the same compute buys, and the learning rate follows the square-root rule for Adam
(Malladi et al. 2022). Rows in MICRO_BATCHES run the gradient cache as a host loop, so
T = min(B, captions) must divide into micro-batches × batch shards.
"""

from __future__ import annotations

import math

from experiments.tables import bases
from experiments.tables.objectives import RECALL_1_10
from experiments.tables.spec import Column, Panel, Row, Section, Table

BATCHES = (64, 256, 1024, 4096, 16384)
# unicode_glyphs/tiny: 142 captions, 284 images. T = B (no batch reaches 142 captions, as
# T = 142 would not split over 8 devices), each a multiple of 8 devices × micro-batches.
QUICK_BATCHES = (16, 64, 128)
EXAMPLES = 2 ** 18  # Training images per cell: 4,096 steps at B = 64, 16 at 16,384.
QUICK_EXAMPLES = 2 ** 9
# Rows whose one-pass step would not fit a 24 GB machine: micro-batches of the gradient
# cache. The quick grid mirrors it on its largest row, so the path is exercised.
MICRO_BATCHES = {16384: 2}
QUICK_MICRO_BATCHES = {128: 2}
BASE_BATCH, BASE_LEARNING_RATE = 256, 2e-3  # experiments/configs/quickstart.py.
MAX_LEARNING_RATE = 4e-3  # Above it, short large-batch runs collapse (README's reading).
LOGS_PER_RUN = 8  # So throughput has intervals after the first (compilation) at 16 steps.

COLUMNS = RECALL_1_10 + (
    Column("train/examples_per_s", "train images/s", fmt="int"),
    Column("train/step_temp_mib", "step memory (MiB)", fmt="int", best=None),
)


def with_mib(metrics: dict) -> dict:
  """The cell's metrics plus its step memory in MiB (the trainer records bytes)."""
  temp = metrics.get("train/step_temp_bytes")
  return {**metrics, "train/step_temp_mib": None if temp is None else temp / 2 ** 20}


def learning_rate(batch: int) -> float:
  """Square-root scaling from quickstart's (batch, rate), capped at MAX_LEARNING_RATE."""
  return min(BASE_LEARNING_RATE * math.sqrt(batch / BASE_BATCH), MAX_LEARNING_RATE)


def overrides(batch: int, examples: int, micro_batches: int = 1) -> dict:
  """The row's config: images-mode sampling, the tiled kernel, a fixed image budget."""
  steps = examples // batch
  row = {"data.sampling": "images", "loss.kernel.impl": "xla_chunked",
         "train.batch_size": batch, "train.steps": steps,
         "train.learning_rate": learning_rate(batch),
         "train.warmup_steps": max(1, round(steps / 10)),
         "train.log_every": max(1, steps // LOGS_PER_RUN)}
  if micro_batches > 1:
    row.update({"train.micro_batches": micro_batches, "train.gradient_cache": True,
                "train.gradient_cache_loop": "host"})  # XLA:CPU: no convolutions in a scan.
  return row


def sections(quick: bool) -> list[Section]:
  data = "unicode_glyphs/tiny" if quick else "unicode_glyphs/full"
  batches, examples = (QUICK_BATCHES, QUICK_EXAMPLES) if quick else (BATCHES, EXAMPLES)
  micro = QUICK_MICRO_BATCHES if quick else MICRO_BATCHES
  rows = tuple(Row(f"B = {batch}" + (f" (gradient cache, {micro[batch]} micro-batches)"
                                     if batch in micro else ""),
                   overrides(batch, examples, micro.get(batch, 1)), view=with_mib, x=batch)
               for batch in batches)
  return [Section(
      name="batch_size", base=bases.glyphs(quick), rows=rows, columns=COLUMNS,
      title=f"Retrieval vs contrastive batch size ({data} test, {examples:,} training "
            "images per cell)",
      notes=("B distinct training images per step against min(B, training captions) "
             "distinct captions (`data.sampling=images`; an image's positive is its "
             "caption, a caption's positives are all its images), InfoNCE through the "
             "tiled XLA kernel. Every row sees the same number of training images, so "
             "steps = budget / B; learning rate 2e-3·sqrt(B / 256) capped at 4e-3 (higher "
             "rates collapsed short large-batch runs), warm-up 10% of the steps. Step "
             "memory: XLA's scratch memory of the compiled train step "
             "(`memory_analysis().temp_size_in_bytes`), mostly the image tower's "
             "activations (the tiled loss itself stays under 150 MiB); rows marked "
             "gradient cache split those activations into micro-batches with the same "
             "loss and gradients."),
      panels=(Panel("curves", tuple(c.key for c in COLUMNS[:4]), "recall vs batch size",
                    xlabel="batch size (images)", ylabel="recall", xscale="log"),
              Panel("curves", ("train/step_temp_mib",), "step memory",
                    xlabel="batch size (images)", ylabel="MiB", xscale="log", ylim=None)))]


TABLE = Table(
    name="batch_size", title="Contrastive batch size: retrieval and memory per step",
    sections=sections, seeds=3,
    full_run_estimate=("~50 min a seed for B = 64 to 4,096 (measured: 9, 11, 14 and 16 min a "
                       "cell) and 18 min for B = 16,384 (measured, as a host-loop gradient "
                       "cache), so split by seeds (`--seeds=1`, 2, 3)"))
