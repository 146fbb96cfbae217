"""How a training batch is drawn (`data.sampling`), chosen by name.

  captions  `pipeline.TrainBatches`: one image per distinct caption, so a batch holds
            at most as many rows as the training split has captions (5,838 on
            unicode_glyphs/full). The default, and exactly the behaviour from
            before this option existed.
  images    `ImageBatches`: `batch_size` distinct images (up to the 43,185 images of
            unicode_glyphs/full) against T = min(batch_size, captions) distinct
            captions, each image pointing at its caption's text row. This is what
            lets the contrastive batch grow past the caption count (the
            batch-size table, experiments/tables/batch_size.py).

Both are pure functions of (seed, step) and build only this process's slice of
the global batch, so resuming and multi-process training work the same way.
"""

from __future__ import annotations

import numpy as np

from mmalign.data import pipeline
from mmalign.data.tokenizer import Tokenizer
from mmalign.errors import UsageError
from mmalign.registry import Registry

SAMPLINGS = Registry("batch sampling")
SAMPLINGS.register("captions")(pipeline.TrainBatches)

# Tags that keep this mode's random streams apart from TrainBatches' (which uses
# [seed, epoch], [seed, 1 << 20, step] and [seed, 2 << 20, step]).
_PERMUTATION, _NEGATIVES, _SHIFTS = 3 << 20, 4 << 20, 5 << 20


def train_batches(sampling: str, source, index: pipeline.SplitIndex, tokenizer: Tokenizer,
                  **kwargs):
  """The `data.sampling` batcher; kwargs are `pipeline.TrainBatches`'s."""
  return SAMPLINGS.get(sampling, config_key="data.sampling")(source, index, tokenizer, **kwargs)


@SAMPLINGS.register("images")
class ImageBatches:
  """Maps step → this process's share of a batch of distinct images and distinct captions.

  Each epoch is a fresh permutation of all training images (seeded by (seed,
  epoch)), cut into whole batches of `global_batch` images (the last partial
  batch is dropped). The text rows are T = min(global_batch, number of groups)
  distinct groups: first the groups of the batch's images, in order of first
  appearance, each worded as its first image in the batch is; then other groups,
  drawn by (seed, step) and worded by their group caption, as extra negatives,
  so every step has the same shapes (one compilation).

  Several images of a batch may share a group, so the batch carries
  `image_to_text` [b] int32, the text row (an index into the GLOBAL text rows)
  of each image's caption; the objective uses it as each image's single
  positive and as each caption's set of positives, so no image is pushed away
  from its own caption (mmalign/losses/objective.py).

  Batch of one process (b = global_batch / processes, t = T / processes):
    images         [b, h, w, c] float32
    groups         [b] int64, each image's group
    image_to_text  [b] int32 in [0, T)
    tokens         [t, length] int32, this process's slice of the text rows
  """

  # Images point at text rows through "image_to_text": the objective scores them
  # with the multi-positive `image_rows_infonce` (build_objective(image_rows=...)).
  image_rows = True

  def __init__(self, source, index: pipeline.SplitIndex, tokenizer: Tokenizer, *,
               global_batch: int, seed: int, normalization: pipeline.ImageNormalization,
               process_index: int | None = None, process_count: int | None = None,
               max_shift: int = 0, labels: np.ndarray | None = None,
               noisy_pair_fraction: float = 0.0):
    if labels is not None:
      raise UsageError("data.sampling='images' does not serve task labels (task.label): "
                       "a text row has no single example whose label it could carry; "
                       "use data.sampling='captions'")
    if noisy_pair_fraction:
      raise UsageError("data.sampling='images' has no noisy pairs: set "
                       "data.noisy_pair_fraction=0 or use data.sampling='captions'")
    num_images = len(index.groups)
    if global_batch > num_images:
      raise UsageError(f"train.batch_size={global_batch} exceeds the {num_images} images of "
                       "the training split (data.sampling='images')")
    self.text_rows = min(global_batch, index.num_groups)
    self._source = source
    self._index = index
    self._tokens = tokenizer.encode(index.captions)  # [examples, length], own wording
    self._group_tokens = tokenizer.encode(index.group_captions)  # [groups, length]
    # [examples] position of each example's group in index.group_ids.
    self._group_position = np.searchsorted(index.group_ids, index.groups)
    self._global_batch = global_batch
    where = f"data.sampling='images' with train.batch_size={global_batch}"
    self._local = pipeline.process_rows(global_batch, where, "images", process_index,
                                        process_count)
    self._local_text = pipeline.process_rows(self.text_rows, where, "text rows", process_index,
                                             process_count)
    self._seed = seed
    self._normalization = normalization
    self._max_shift = max_shift
    self.steps_per_epoch = num_images // global_batch

  def image_examples(self, step: int) -> np.ndarray:
    """Example indices of the global batch's images at `step`: [global_batch], distinct."""
    epoch, within = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng([self._seed, _PERMUTATION, epoch]).permutation(
        len(self._index.groups))
    return order[within * self._global_batch:(within + 1) * self._global_batch]

  def text_rows_of(self, step: int, examples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [T, length], image_to_text [global_batch]) for the images `examples`."""
    positions = self._group_position[examples]  # [B]
    groups, first, inverse = np.unique(positions, return_index=True, return_inverse=True)
    order = np.argsort(first)  # Groups in order of first appearance in the batch.
    row_of = np.empty_like(order)
    row_of[order] = np.arange(len(order))
    image_to_text = row_of[inverse.reshape(-1)].astype(np.int32)
    own = groups[order]
    rng = np.random.default_rng([self._seed, _NEGATIVES, step])
    others = rng.permutation(self._index.num_groups)
    others = others[~np.isin(others, own)][:self.text_rows - len(own)]
    tokens = np.concatenate([self._tokens[examples[first[order]]], self._group_tokens[others]])
    return tokens, image_to_text

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    # As in TrainBatches: every choice is made for the global batch, then sliced,
    # so the global batch does not depend on the number of processes.
    examples = self.image_examples(step)
    tokens, image_to_text = self.text_rows_of(step, examples)
    local = examples[self._local]
    images = self._normalization(pipeline.decode_images(self._source, local))
    if self._max_shift:
      rng = np.random.default_rng([self._seed, _SHIFTS, step])
      shifts = rng.integers(0, 2 * self._max_shift + 1, size=(self._global_batch, 2))
      # pylint: disable-next=protected-access
      images = pipeline._shift(images, self._max_shift, shifts[self._local])
    return {"tokens": tokens[self._local_text], "images": images,
            "groups": self._index.groups[local],
            "image_to_text": image_to_text[self._local]}
