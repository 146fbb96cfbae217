"""How a training batch is drawn (`data.sampling`), chosen by name.

  captions  `pipeline.TrainBatches` (default): one image per distinct caption, so a batch
            holds at most as many rows as the split has captions.
  images    `ImageBatches`: distinct images against T = min(batch_size, captions)
            distinct captions, so the contrastive batch can grow past the caption count.

Both are pure functions of (seed, step) and build only this process's slice.
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

  Each epoch is a permutation of all training images (last partial batch dropped). The
  T = min(global_batch, groups) text rows are the batch's groups in order of first
  appearance, worded as their first image, then other groups drawn by (seed, step) as
  extra negatives, so every step has the same shapes (one compilation). Images may share
  a group, so `image_to_text` indexes the GLOBAL text rows; the objective uses it as the
  positives, so no image is pushed away from its own caption.

  Batch of one process (b = global_batch / processes, t = T / processes):
    images         [b, h, w, c] float32
    groups         [b] int64, each image's group
    image_to_text  [b] int32 in [0, T)
    tokens         [t, length] int32, this process's slice of the text rows
  """

  # The objective scores "image_to_text" with the multi-positive `image_rows_infonce`.
  image_rows = True

  def __init__(self, source, index: pipeline.SplitIndex, tokenizer: Tokenizer, *,
               global_batch: int, seed: int, normalization: pipeline.ImageNormalization,
               process_index: int | None = None, process_count: int | None = None,
               max_shift: int = 0, labels: np.ndarray | None = None,
               noisy_pair_fraction: float = 0.0,
               augmentation: pipeline.Augmentation | None = None):
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
    self._augmentation = augmentation
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
    row_of = np.argsort(order)  # The inverse permutation: each group's text row.
    image_to_text = row_of[inverse.reshape(-1)].astype(np.int32)
    own = groups[order]
    rng = np.random.default_rng([self._seed, _NEGATIVES, step])
    others = rng.permutation(self._index.num_groups)
    others = others[~np.isin(others, own)][:self.text_rows - len(own)]
    tokens = np.concatenate([self._tokens[examples[first[order]]], self._group_tokens[others]])
    return tokens, image_to_text

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    # As in TrainBatches: drawn for the global batch, then sliced.
    examples = self.image_examples(step)
    tokens, image_to_text = self.text_rows_of(step, examples)
    local = examples[self._local]
    images = self._normalization(pipeline.decode_images(
        self._source, local, self._normalization.size, self._augmentation,
        pipeline.augmentation_seeds(self._seed, step,
                                    np.arange(self._global_batch)[self._local])))
    if self._max_shift:
      rng = np.random.default_rng([self._seed, _SHIFTS, step])
      shifts = rng.integers(0, 2 * self._max_shift + 1, size=(self._global_batch, 2))
      images = pipeline.shift_images(images, self._max_shift, shifts[self._local])
    return {"tokens": tokens[self._local_text], "images": images,
            "groups": self._index.groups[local],
            "image_to_text": image_to_text[self._local]}
