"""Downstream tasks on the `shapes` dataset, defined from its stored labels.

* Matching (`matching_pairs`): does this caption describe this image? Every image and
  every caption appears once in a positive and once in a negative pair, so a text-only or
  image-only classifier scores exactly 50% on any split. Negatives are hard by default:
  same number of shapes and colours (`NEGATIVE_KEYS`).
* Tags (`tags_of`): multi-hot shapes, colours, sizes and arrangements of a scene.
* Zero-shot shape classification (`SHAPE_TEMPLATES`) on one-shape scenes (`one_shape`).
* Attributes (`attribute_labels`): `num_shapes`, `shape1`, `color1`, ... as classes;
  `shape1`/`color1`/`relation` follow the caption's word order ("A below B" names A
  first), which an image alone cannot know for two-shape scenes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from mmalign.data.builders import shapes
from mmalign.data.pipeline import text_of
from mmalign.errors import UsageError

LABEL_NAMES = shapes.LABEL_NAMES  # Class names of the stored labels (index 0 is "none").
LABEL_KEYS = ("num_shapes", *LABEL_NAMES)


@dataclasses.dataclass(frozen=True)
class ShapesSplit:
  """Captions, groups and labels of one split, in the split's example order."""
  captions: list[str]  # [n]
  groups: np.ndarray  # [n] int64
  labels: dict[str, np.ndarray]  # LABEL_KEYS → [n] int64 (class ids; num_shapes is 1 or 2)

  def __len__(self) -> int:
    return len(self.captions)


def read_split(caption_source) -> ShapesSplit:
  """Reads a split opened with `decode_images=False` (no PNG is decoded)."""
  num = len(caption_source)
  captions, groups = [], np.empty(num, np.int64)
  labels = {key: np.empty(num, np.int64) for key in LABEL_KEYS}
  for i in range(num):
    example = caption_source[i]
    missing = [key for key in ("caption", "group", *LABEL_KEYS) if key not in example]
    if missing:
      raise UsageError(f"example {i} has no feature {', '.join(map(repr, missing))}: these "
                       "tasks need the shapes dataset (config key 'data.name')")
    captions.append(text_of(example["caption"]))
    groups[i] = int(example["group"])
    for key in LABEL_KEYS:
      labels[key][i] = int(example[key])
  return ShapesSplit(captions, groups, labels)


def _check_labels(labels: dict[str, np.ndarray]) -> int:
  """Number of examples; every LABEL_KEYS key present, all of one length."""
  missing = [key for key in LABEL_KEYS if key not in labels]
  if missing:
    raise ValueError(f"labels lack {', '.join(missing)}")
  lengths = {key: np.shape(labels[key]) for key in LABEL_KEYS}
  if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
    raise ValueError(f"labels must be 1-D and of one length, got shapes {lengths}")
  return int(np.shape(labels[LABEL_KEYS[0]])[0])


def _count_and_pair(labels, attribute: str) -> np.ndarray:
  """[n, 3]: num_shapes, then both `attribute`s sorted, so "A below B" = "B above A"."""
  pair = np.sort(np.stack([labels[f"{attribute}1"], labels[f"{attribute}2"]], axis=1), axis=1)
  return np.concatenate([labels["num_shapes"][:, None], pair], axis=1)


# What a negative caption shares with the image's own: [n, k] int keys, equal within a group.
NEGATIVE_KEYS: dict[str, Callable[[dict], np.ndarray]] = {
    "random": lambda labels: np.zeros((len(labels["num_shapes"]), 1), np.int64),
    "colors": lambda labels: _count_and_pair(labels, "color"),
    "shapes": lambda labels: _count_and_pair(labels, "shape"),
}


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Caption–image pairs; indices point into one split's examples."""
  image_index: np.ndarray  # [m] int64: whose image
  caption_index: np.ndarray  # [m] int64: whose caption
  label: np.ndarray  # [m] int64: 1 when the caption describes the image (same group)


def negative_partners(groups, keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A permutation `partner` [n] with groups[partner[i]] != groups[i], local in `keys`.

  keys: [n, k], equal within a group. Every caption is used as a negative exactly once.
  Raises ValueError with fewer than two groups, or when one holds over half the examples.
  Why it works: sorted by (key, random group rank), each group is one run; equal-key
  buckets merge into chunks where no run exceeds half, and shifting by the longest run
  inside a chunk always lands in another group.
  """
  groups = np.asarray(groups)
  num = groups.shape[0]
  keys = np.asarray(keys).reshape(num, -1)
  group_ids, group_of = np.unique(groups, return_inverse=True)
  group_of = group_of.reshape(-1)
  if group_ids.size < 2:
    raise ValueError("matching pairs need at least two groups")
  first = np.zeros(group_ids.size, np.int64)  # One example per group, to compare keys.
  first[group_of[::-1]] = np.arange(num)[::-1]
  if np.any(keys != keys[first[group_of]]):
    raise ValueError("negative keys differ within a group; they must depend on the scene")
  rank = rng.permutation(group_ids.size)[group_of]  # [n] random order of groups
  order = np.lexsort((rng.random(num), rank, *keys.T[::-1]))  # Last key sorts first.
  sorted_groups, sorted_keys = group_of[order], keys[order]
  new_bucket = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)  # [n - 1]
  new_run = sorted_groups[1:] != sorted_groups[:-1]
  bucket_starts = np.flatnonzero(np.concatenate([[True], new_bucket]))
  run_starts = np.flatnonzero(np.concatenate([[True], new_run]))
  run_length = np.zeros(num, np.int64)  # At each run start, the length of that run.
  run_length[run_starts] = np.diff(np.append(run_starts, num))

  def fits(start: int, stop: int) -> bool:
    return stop - start >= 2 * run_length[start:stop].max()

  chunks = []  # [start, stop) positions in `order`
  start = 0
  for stop in np.append(bucket_starts[1:], num):
    if fits(start, stop):
      chunks.append((start, int(stop)))
      start = int(stop)
  if start < num:  # The remainder joins earlier chunks until the union fits.
    stop = num
    while not fits(start, stop):
      if not chunks:
        raise ValueError("one group holds more than half of the examples, so not every "
                         "image can get another group's caption")
      start = chunks.pop()[0]
    chunks.append((start, stop))
  partner = np.empty(num, np.int64)
  for start, stop in chunks:
    shift = int(run_length[start:stop].max())
    positions = order[start:stop]
    partner[positions] = np.roll(positions, -shift)
  return partner


def matching_pairs(groups, labels: dict[str, np.ndarray], rng: np.random.Generator, *,
                   negatives: str = "colors") -> Pairs:
  """2n pairs: each image with its own caption (1) and with a hard negative's (0).

  groups: [n]; labels: LABEL_KEYS → [n]. `negatives` names a NEGATIVE_KEYS entry: "colors"
  pairs an image with another scene's caption sharing shape count and colours where the
  split has one, "shapes" likewise for shapes, "random" any other scene. Pairs are
  interleaved: image i at rows 2i (own caption) and 2i + 1 (negative).
  """
  if negatives not in NEGATIVE_KEYS:
    raise UsageError(f"unknown negatives {negatives!r}; known: {', '.join(NEGATIVE_KEYS)}")
  groups = np.asarray(groups)
  num = _check_labels(labels)
  if groups.shape != (num,):
    raise ValueError(f"groups must have shape ({num},) like the labels, got {groups.shape}")
  partner = negative_partners(groups, NEGATIVE_KEYS[negatives](labels), rng)
  images = np.repeat(np.arange(num), 2)  # [2n]: 0, 0, 1, 1, ...
  captions = np.stack([np.arange(num), partner], axis=1).reshape(-1)  # own, partner's
  return Pairs(images, captions, np.tile(np.array([1, 0], np.int64), num))


ARRANGEMENTS = {"stacked": ("above", "below"), "side by side": ("left of", "right of")}
TAGS = (*shapes.SHAPES, *shapes.COLORS, *shapes.SIZES, *ARRANGEMENTS)


def tags_of(labels: dict[str, np.ndarray]) -> np.ndarray:
  """[n, len(TAGS)] int64 multi-hot: the shapes, colours, sizes and arrangement present."""
  num = _check_labels(labels)
  out = np.zeros((num, len(TAGS)), np.int64)
  for key in ("shape1", "shape2", "color1", "color2", "size1", "size2"):
    for class_id, name in enumerate(LABEL_NAMES[key][1:], 1):  # 0 is "none": nothing to tag.
      out[labels[key] == class_id, TAGS.index(name)] = 1
  for tag, relations in ARRANGEMENTS.items():
    ids = [shapes.RELATION_NAMES.index(r) for r in relations]
    out[np.isin(labels["relation"], ids), TAGS.index(tag)] = 1
  return out


_THINGS = [f"{size} {color} {shape}" for size in shapes.SIZES for color in shapes.COLORS
           for shape in shapes.SHAPES]


def tag_prompts(tag: str) -> list[str]:
  """Captions, in the dataset's own wording, that say the tag holds.

  A shape, colour or size tag gets every one-shape caption naming it; an arrangement gets
  two-shape captions with each of its relations.
  """
  if tag in ARRANGEMENTS:
    return [f"a {a} {relation} a {_THINGS[(k + 7) % len(_THINGS)]}"
            for k, a in enumerate(_THINGS) for relation in ARRANGEMENTS[tag]]
  if tag not in TAGS:
    raise ValueError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")
  return [f"a {thing}" for thing in _THINGS if tag in thing.split()]


SHAPE_TEMPLATES = tuple(f"a {size} {color} {{}}" for size in shapes.SIZES
                        for color in shapes.COLORS)
SHAPE_CLASSES = shapes.SHAPES  # Class k is SHAPE_NAMES[k + 1]: "none" is not a class here.


def one_shape(labels: dict[str, np.ndarray]) -> np.ndarray:
  """[n] bool: scenes with a single shape, whose shape1 is the only shape."""
  return np.asarray(labels["num_shapes"]) == 1


def shape_targets(labels: dict[str, np.ndarray]) -> np.ndarray:
  """shape1 as an index into SHAPE_CLASSES: [n] int64 (for one-shape scenes)."""
  shape1 = np.asarray(labels["shape1"])
  if np.any(shape1 == 0):
    raise ValueError("shape1 is 'none' for some scenes; every scene has a first shape")
  return (shape1 - 1).astype(np.int64)


def attribute_labels(labels: dict[str, np.ndarray], name: str) -> tuple[np.ndarray,
                                                                          tuple[str, ...]]:
  """(class ids [n] int64, class names) of one stored attribute."""
  if name == "num_shapes":
    return np.asarray(labels[name]) - 1, ("one", "two")
  if name not in LABEL_NAMES:
    raise UsageError(f"unknown attribute {name!r}; known: {', '.join(LABEL_KEYS)}")
  return np.asarray(labels[name]).astype(np.int64), LABEL_NAMES[name]
