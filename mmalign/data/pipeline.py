"""Input pipeline: TFDS data sources read with grain, one batch per training step.

Training batches hold distinct groups, so no caption in a batch is a false negative for
another. Batch `step` is a pure function of (seed, step), which makes resuming exact, and
each process builds only its own slice of the global batch.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from mmalign.data.tokenizer import Tokenizer
from mmalign.errors import UsageError


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """What a split holds, read once without decoding images.

  A group may be worded several ways ("A above B", "B below A"): its caption (the
  retrieval query) is its first example's wording; training uses each example's own.
  """
  groups: np.ndarray                 # [examples] int64, group of each example
  group_ids: np.ndarray              # [num_groups] int64, sorted distinct groups
  group_captions: list[str]          # [num_groups] caption of each group
  members: list[np.ndarray]          # [num_groups] example indices of each group
  captions: list[str] = dataclasses.field(default_factory=list)  # [examples] own wording
  # [examples] which examples share one image (one per caption of a multi-caption image),
  # None when every example has its own image (the built-in datasets).
  image_records: np.ndarray | None = None

  @property
  def image_examples(self) -> np.ndarray:
    """One example per distinct image, in order: [images] example indices."""
    if self.image_records is None:
      return np.arange(len(self.groups))
    return np.unique(self.image_records, return_index=True)[1]

  @property
  def num_groups(self) -> int:
    return len(self.group_ids)

  @property
  def tokenizer_corpus(self) -> list[str]:
    """Group captions, then every other wording once: what the tokenizer learns from."""
    seen = set(self.group_captions)
    extra = [c for c in self.captions if not (c in seen or seen.add(c))]
    return list(self.group_captions) + extra


def index_split(caption_source) -> SplitIndex:
  """Scans a source opened with `decode_images=False` (fast: no PNG decoding)."""
  groups = np.empty(len(caption_source), np.int64)
  image_records = np.empty(len(caption_source), np.int64)
  example_captions: list[str] = []
  captions: dict[int, str] = {}
  multi_caption = False
  for i in range(len(caption_source)):
    example = caption_source[i]
    groups[i] = int(example["group"])
    multi_caption = "image_record" in example
    image_records[i] = int(example.get("image_record", i))
    example_captions.append(text_of(example["caption"]))
    captions.setdefault(int(groups[i]), example_captions[-1])
  group_ids = np.array(sorted(captions), np.int64)
  order = np.argsort(groups, kind="stable")
  bounds = np.searchsorted(groups[order], group_ids, side="left")
  members = np.split(order, bounds[1:])
  return SplitIndex(groups, group_ids, [captions[int(g)] for g in group_ids], members,
                    example_captions, image_records if multi_caption else None)


@dataclasses.dataclass(frozen=True)
class ImageNormalization:
  """uint8 [b, h, w, c] → float32 [b, size, size, channels]: with `size`, the shorter side
  resized to it (bicubic) and the centre cropped square, as CLIP's preprocessing does; then
  pixels ← (pixels / 255 − mean) / std, per channel or one value for all. A grey image meets
  a three-value mean as RGB (its one channel repeated), so RGB weights read it."""
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)
  size: int | None = None

  def output_shape(self, stored: tuple[int, int, int]) -> tuple[int, int, int]:
    """The shape images of the dataset's `stored` shape [h, w, c] come out with."""
    height, width, channels = stored
    channels = max(channels, len(self.mean), len(self.std))
    return (self.size, self.size, channels) if self.size else (height, width, channels)

  def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
    if self.size and images_uint8.shape[1:3] != (self.size, self.size):
      images_uint8 = np.stack([resize_and_crop(image, self.size) for image in images_uint8])
    images = images_uint8.astype(np.float32) / 255.0
    return (images - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [h, w, c] → [size, size, c]: shorter side to `size` (bicubic), centre crop, with
  torchvision's rounding (`Resize(size)` then `CenterCrop(size)` on a PIL image, CLIP's)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  height, width, channels = image.shape
  longer = int(size * max(height, width) / min(height, width))
  new_height, new_width = (size, longer) if height <= width else (longer, size)
  resized = Image.fromarray(image[..., 0] if channels == 1 else image).resize(
      (new_width, new_height), Image.Resampling.BICUBIC)
  top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
  cropped = np.asarray(resized, np.uint8)[top:top + size, left:left + size]
  return cropped.reshape(size, size, channels)


def text_of(value) -> str:
  """Captions come back from array_record as bytes."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_images(source, indices: np.ndarray, size: int | None = None,
                  augmentation: Augmentation | None = None,
                  row_seeds: list | None = None) -> np.ndarray:
  """uint8 [len(indices), h, w, c] read by random access. An image not `size`² is resized
  and centre-cropped to it; with `augmentation`, row n is cropped and flipped at random by
  `row_seeds[n]` instead."""
  images = []
  for n, i in enumerate(indices):
    image = source[int(i)]["image"]
    if augmentation:
      image = augmentation(image, size, np.random.default_rng(row_seeds[n]))
    elif size and image.shape[:2] != (size, size):
      image = resize_and_crop(image, size)
    images.append(image)
  return np.stack(images)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training-only: a random crop of `crop_min_area`..1 of the image's area with an aspect
  ratio in [3/4, 4/3], resized to `size`² (or the image's own size), then a horizontal flip
  with probability 1/2 when `flip` (the Inception/CLIP recipe). Drawn from a per-row seed,
  so a batch is the same whichever process builds it and however often it is replayed."""
  crop_min_area: float | None = None
  flip: bool = False

  def __bool__(self) -> bool:
    return bool(self.crop_min_area) or self.flip

  def __call__(self, image: np.ndarray, size: int | None,
               rng: np.random.Generator) -> np.ndarray:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    height, width, channels = image.shape
    out_height, out_width = (size, size) if size else (height, width)
    top, left, crop_height, crop_width = 0, 0, height, width
    if self.crop_min_area:
      area = height * width * rng.uniform(self.crop_min_area, 1.0)
      ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      crop_width = int(np.clip(round(np.sqrt(area * ratio)), 1, width))
      crop_height = int(np.clip(round(np.sqrt(area / ratio)), 1, height))
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
    pixels = image[top:top + crop_height, left:left + crop_width]
    if (crop_height, crop_width) != (out_height, out_width):
      resized = Image.fromarray(pixels[..., 0] if channels == 1 else pixels).resize(
          (out_width, out_height), Image.Resampling.BICUBIC)
      pixels = np.asarray(resized, np.uint8).reshape(out_height, out_width, channels)
    if self.flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def augmentation_seeds(seed: int, step: int, rows: np.ndarray) -> list:
  """The seeds of `augmentation` for global batch rows `rows` at `step`."""
  return [[seed, 6 << 20, step, int(row)] for row in rows]


def process_rows(rows: int, context: str, noun: str = "rows", process_index: int | None = None,
                 process_count: int | None = None) -> slice:
  """This process's contiguous block of a batch's `rows`, as `mesh.global_batch` assembles
  them. Raises UsageError (prefixed by `context`) unless the processes divide `rows`."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if rows % process_count:
    raise UsageError(f"{context}: the {rows} {noun} of a batch do not divide among the "
                     f"{process_count} processes")
  return slice(process_index * rows // process_count, (process_index + 1) * rows // process_count)


class TrainBatches:
  """Maps step → this process's share of the global batch, as numpy arrays.

  Each epoch is a permutation of the groups, each contributing one example chosen by
  (seed, step); an epoch's last partial batch is dropped.
  """

  # Row i's caption pairs with row i's image; the objective reads this flag.
  image_rows = False

  def __init__(self, source, index: SplitIndex, tokenizer: Tokenizer, *, global_batch: int,
               seed: int, normalization: ImageNormalization,
               process_index: int | None = None, process_count: int | None = None,
               max_shift: int = 0, labels: np.ndarray | None = None,
               noisy_pair_fraction: float = 0.0, augmentation: Augmentation | None = None):
    """`labels` [examples] int: served as batch["labels"] (multi-task training).
    `noisy_pair_fraction` in [0, 1]: share of pairs given another row's image."""
    if global_batch > index.num_groups:
      raise UsageError(f"train.batch_size={global_batch} exceeds the {index.num_groups} "
                       "distinct captions of the training split")
    self._source = source
    self._index = index
    self._tokens = tokenizer.encode(index.captions)  # [examples, length], own wording
    self._global_batch = global_batch
    self._local = process_rows(global_batch, f"train.batch_size={global_batch}",
                               process_index=process_index, process_count=process_count)
    self._seed = seed
    self._normalization = normalization
    self._max_shift = max_shift
    self._augmentation = augmentation
    if not 0.0 <= noisy_pair_fraction <= 1.0:
      raise UsageError(f"data.noisy_pair_fraction must be in [0, 1]; got {noisy_pair_fraction}")
    self._noisy_pair_fraction = noisy_pair_fraction
    if labels is not None and len(labels) != len(index.groups):
      raise ValueError(f"labels has {len(labels)} entries for {len(index.groups)} examples")
    self._labels = labels
    self.steps_per_epoch = index.num_groups // global_batch

  def group_positions(self, step: int) -> np.ndarray:
    """Positions (into `index.group_ids`) of the global batch of `step`: [global_batch]."""
    epoch, within = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng([self._seed, epoch]).permutation(self._index.num_groups)
    return order[within * self._global_batch:(within + 1) * self._global_batch]

  def noisy_rows(self, step: int) -> np.ndarray:
    """Rows of the global batch of `step` whose image belongs to another row: [k] sorted,
    k = round(fraction · batch); their images are rotated by one among them."""
    k = int(round(self._noisy_pair_fraction * self._global_batch))
    if k < 2:  # One row cannot swap with itself.
      return np.zeros((0,), np.int64)
    rng = np.random.default_rng([self._seed, 2 << 20, step])
    return np.sort(rng.choice(self._global_batch, size=k, replace=False))

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    # Drawn for the global batch, then sliced: independent of the process count.
    global_positions = self.group_positions(step)
    rng = np.random.default_rng([self._seed, 1 << 20, step])
    choices = rng.random(len(global_positions))  # [global]
    examples = np.array([members[int(u * len(members))] for u, members in
                         zip(choices, (self._index.members[p] for p in global_positions))])
    image_examples = examples.copy()
    noisy = self.noisy_rows(step)
    image_examples[noisy] = examples[np.roll(noisy, 1)]
    examples, image_examples = examples[self._local], image_examples[self._local]
    images = self._normalization(decode_images(
        self._source, image_examples, self._normalization.size, self._augmentation,
        augmentation_seeds(self._seed, step, np.arange(len(global_positions))[self._local])))
    if self._max_shift:
      shifts = rng.integers(0, 2 * self._max_shift + 1, size=(len(global_positions), 2))
      images = shift_images(images, self._max_shift, shifts[self._local])
    batch = {"tokens": self._tokens[examples], "images": images,
             "groups": self._index.group_ids[global_positions[self._local]]}
    if self._labels is not None:
      batch["labels"] = self._labels[examples].astype(np.int32)  # The caption's example.
    return batch


def read_labels(caption_source, key: str) -> np.ndarray:
  """Each example's integer feature `key`: [examples] int64 (no image decoding)."""
  return np.array([int(caption_source[i][key]) for i in range(len(caption_source))], np.int64)


def shift_images(images: np.ndarray, max_shift: int, offsets: np.ndarray) -> np.ndarray:
  """Translates images [b, h, w, c] by offsets [b, 2] in [0, 2·max_shift] (edge padding)."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)), mode="edge")
  return np.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def train_iterator(batches: TrainBatches, *, start_step: int, num_steps: int,
                   num_threads: int = 2, prefetch: int = 4):
  """A grain iterator over steps [start_step, num_steps), prefetched in threads."""
  dataset = grain.MapDataset.range(start_step, num_steps).map(batches)
  return iter(dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))

