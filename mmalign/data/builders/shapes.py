"""shapes: procedural scenes of one or two coloured shapes, captioned exactly.

A synthetic image–text dataset whose captions are compositional ("a small red
circle above a large blue square"), with every attribute also stored as a
label, to probe whether a model binds colour, size and shape to the right
object and reads spatial relations. Each scene is drawn with PIL from a seed
and its index, so a build is the same on every machine.

Splits are by the scene's caption, so attribute combinations of the held-out
splits never appear in training. "A above B" and "B below A" describe the same
scenes, so they count as one caption: they share a group and a split.

The `*_colourless` configs draw the same kind of scenes but leave the colours out
of the captions ("a small circle above a large square") while still storing
them as labels. There the colour of the first-named shape needs both modalities:
only the caption says which shape is first, only the pixels show its colour
(the fusion table's second section, experiments/tables/fusion.py). Groups and
splits follow the colourless wording, and the two shapes of a scene always
differ in shape or size, so the caption always singles one out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from mmalign.data.images import png_bytes
from mmalign.data.registry import register_dataset
from mmalign.data.split import split_of

IMAGE_SIZE = 64
NONE = "none"  # The label of an absent second shape, and of no relation.
SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLORS = {  # Name -> RGB; each shape gets a small random tint around it.
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (235, 200, 20),
    "green": (35, 155, 55), "blue": (35, 85, 215), "purple": (135, 55, 185),
}
SIZES = {"small": (10.0, 14.0), "large": (22.0, 26.0)}  # Extent in pixels, [low, high).
RELATIONS = ("above", "below", "left of", "right of")  # Of the first shape to the second.
_MIRROR = {"below": "above", "right of": "left of"}  # To the canonical wording.
P_ONE_SHAPE = 0.25
_TINT = 12  # Largest change of a colour channel.
_MARGIN = 2.0  # Pixels kept free at the border.
_GAP = 4.0  # Least free space between two shapes along their relation's axis.
_SUPERSAMPLE = 4  # Drawn this much larger, then box-filtered down (antialiasing).

# Class names of the stored labels; index 0 is always NONE.
SHAPE_NAMES = (NONE,) + SHAPES
COLOR_NAMES = (NONE,) + tuple(COLORS)
SIZE_NAMES = (NONE,) + tuple(SIZES)
RELATION_NAMES = (NONE,) + RELATIONS
LABEL_NAMES = {  # The stored ClassLabel features → their class names.
    "shape1": SHAPE_NAMES, "color1": COLOR_NAMES, "size1": SIZE_NAMES,
    "shape2": SHAPE_NAMES, "color2": COLOR_NAMES, "size2": SIZE_NAMES,
    "relation": RELATION_NAMES,  # Of shape 1 to shape 2.
}


@dataclasses.dataclass(frozen=True)
class Thing:
  shape: str
  color: str
  size: str

  def words(self, colour: bool = True) -> str:
    return f"{self.size} {self.color} {self.shape}" if colour else f"{self.size} {self.shape}"

  def described(self, colour: bool) -> Thing:
    """What a caption tells of this thing: without colour words, its colour is NONE."""
    return self if colour else dataclasses.replace(self, color=NONE)


@dataclasses.dataclass(frozen=True)
class Scene:
  things: tuple[Thing, ...]  # One or two.
  relation: str  # How things[0] stands to things[1]; NONE for one thing.
  centres: tuple[tuple[float, float], ...]  # (x, y) in pixels, per thing.
  extents: tuple[float, ...]  # Width and height of each thing's box, in pixels.
  rgbs: tuple[tuple[int, int, int], ...]  # Tinted colour of each thing.

  @property
  def caption(self) -> str:
    return self.wording(colours=True)

  def wording(self, colours: bool) -> str:
    """The caption, with or without the colour words."""
    if len(self.things) == 1:
      return f"a {self.things[0].words(colours)}"
    return (f"a {self.things[0].words(colours)} {self.relation} "
            f"a {self.things[1].words(colours)}")

  def canonical(self) -> tuple[tuple[Thing, ...], str]:
    """Things and relation in the kept wording of "A below B" / "B above A" (and right/left)."""
    if self.relation in _MIRROR:
      return self.things[::-1], _MIRROR[self.relation]
    return self.things, self.relation

  @property
  def canonical_caption(self) -> str:
    return self.canonical_wording(colours=True)

  def canonical_wording(self, colours: bool) -> str:
    things, relation = self.canonical()
    return dataclasses.replace(self, things=things, relation=relation).wording(colours)

  @property
  def group(self) -> int:
    return self.group_of(colours=True)

  def group_of(self, colours: bool) -> int:
    """Mixed-radix code of the canonical labels the wording names: one per canonical caption."""
    things, relation = self.canonical()
    code = 0
    for i in range(2):
      thing = things[i].described(colours) if i < len(things) else Thing(NONE, NONE, NONE)
      for names, value in ((SHAPE_NAMES, thing.shape), (COLOR_NAMES, thing.color),
                           (SIZE_NAMES, thing.size)):
        code = code * len(names) + names.index(value)
    return code * len(RELATION_NAMES) + RELATION_NAMES.index(relation)


def _random_thing(rng: np.random.Generator) -> Thing:
  return Thing(SHAPES[rng.integers(len(SHAPES))], tuple(COLORS)[rng.integers(len(COLORS))],
               tuple(SIZES)[rng.integers(len(SIZES))])


def _place_one(rng: np.random.Generator, extent: float) -> tuple[float, float]:
  low, high = _MARGIN + extent / 2, IMAGE_SIZE - _MARGIN - extent / 2
  return float(rng.uniform(low, high)), float(rng.uniform(low, high))


def _place_two(rng: np.random.Generator, relation: str,
               extents: tuple[float, float]) -> tuple[tuple[float, float], ...]:
  """Centres for two things so that `relation` is plain to see.

  The boxes are at least _GAP apart along the relation's axis and offset across it by at
  most a third of that distance, so "above" is never mistaken for "left of".
  """
  lead_first = relation in ("above", "left of")  # Is things[0] at the smaller coordinate?
  e_lead, e_next = extents if lead_first else extents[::-1]
  half_sum = (e_lead + e_next) / 2
  distance = rng.uniform(half_sum + _GAP, IMAGE_SIZE - 2 * _MARGIN - half_sum)
  along_lead = rng.uniform(_MARGIN + e_lead / 2, IMAGE_SIZE - _MARGIN - e_next / 2 - distance)
  offset = rng.uniform(-distance / 3, distance / 3)
  across_low = max(_MARGIN + e_lead / 2, _MARGIN + e_next / 2 - offset)
  across_high = min(IMAGE_SIZE - _MARGIN - e_lead / 2, IMAGE_SIZE - _MARGIN - e_next / 2 - offset)
  across_lead = rng.uniform(across_low, across_high)
  lead = (float(along_lead), float(across_lead))
  follow = (float(along_lead + distance), float(across_lead + offset))
  pair = (lead, follow) if lead_first else (follow, lead)
  if relation in ("above", "below"):  # Along is y: swap to (x, y).
    pair = tuple((across, along) for along, across in pair)
  return pair


def sample_scene(seed: int, index: int, colours: bool = True) -> Scene:
  """The scene numbered `index`, a function of (seed, index) only.

  colours: whether captions will name colours; without them, the two things differ in
  shape or size (else "left of" and "right of" would both be true).
  """
  rng = np.random.default_rng([seed, index])
  if rng.random() < P_ONE_SHAPE:
    things, relation = (_random_thing(rng),), NONE
  else:
    first = _random_thing(rng)
    second = _random_thing(rng)
    while second.described(colours) == first.described(colours):  # See the docstring.
      second = _random_thing(rng)
    things, relation = (first, second), RELATIONS[rng.integers(len(RELATIONS))]
  extents = tuple(float(rng.uniform(*SIZES[thing.size])) for thing in things)
  centres = ((_place_one(rng, extents[0]),) if len(things) == 1
             else _place_two(rng, relation, extents))
  rgbs = tuple(
      tuple(int(v) for v in np.clip(np.array(COLORS[t.color]) + rng.integers(-_TINT, _TINT + 1, 3),
                                    0, 255))
      for t in things)
  return Scene(things, relation, centres, extents, rgbs)


def _outline(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]]:
  """Polygon of `shape` filling the box of side `extent` around (cx, cy)."""
  r = extent / 2
  if shape == "square":
    return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
  if shape == "triangle":  # Pointing up.
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
  if shape == "diamond":
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
  if shape == "star":  # Five points, one up; centred on its box, not its centre.
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    xs, ys = radii * np.cos(angles), -radii * np.sin(angles)
    scale = 2 / max(xs.max() - xs.min(), ys.max() - ys.min())
    xs, ys = (xs - (xs.max() + xs.min()) / 2) * scale, (ys - (ys.max() + ys.min()) / 2) * scale
    return [(cx + r * x, cy + r * y) for x, y in zip(xs, ys)]
  raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
  """Draws the scene on white: uint8 `[size, size, 3]`."""
  scale = _SUPERSAMPLE * size / IMAGE_SIZE
  page = Image.new("RGB", (_SUPERSAMPLE * size,) * 2, "white")
  draw = ImageDraw.Draw(page)
  for thing, (cx, cy), extent, rgb in zip(scene.things, scene.centres, scene.extents, scene.rgbs):
    cx, cy, extent = cx * scale, cy * scale, extent * scale
    if thing.shape == "circle":
      draw.ellipse((cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2), fill=rgb)
    else:
      draw.polygon(_outline(thing.shape, cx, cy, extent), fill=rgb)
  return np.asarray(page.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def labels_of(scene: Scene) -> dict[str, str | int]:
  """The stored attribute features, as class names (TFDS maps them to ids)."""
  labels = {"num_shapes": len(scene.things), "relation": scene.relation}
  for i in range(2):
    thing = scene.things[i] if i < len(scene.things) else Thing(NONE, NONE, NONE)
    labels.update({f"shape{i + 1}": thing.shape, f"color{i + 1}": thing.color,
                   f"size{i + 1}": thing.size})
  return labels


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  num_scenes: int = 20_000  # Over all splits together.
  seed: int = 0
  caption_colours: bool = True  # False: the *_colourless wording (module docstring).


@register_dataset("shapes")
class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedural coloured shapes with compositional captions and attribute labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="tiny", description="300 scenes.", num_scenes=300),
      ShapesConfig(name="full", description="20,000 scenes.", num_scenes=20_000),
      ShapesConfig(name="tiny_colourless", description="300 scenes, no colour words.",
                   num_scenes=300, caption_colours=False),
      ShapesConfig(name="full_colourless", description="20,000 scenes, no colour words.",
                   num_scenes=20_000, caption_colours=False),
  ]
  DEFAULT_CONFIG_NAME = "tiny"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "caption": tfds.features.Text(),
            "group": np.int64,  # Mixed-radix code of the canonical caption (Scene.group).
            "num_shapes": np.int64,  # 1 or 2.
            **{key: tfds.features.ClassLabel(names=list(names))
               for key, names in LABEL_NAMES.items()},
        }),
        license="Generated by mmalign's code, no third-party content: CC0 1.0 (data), "
                "Apache-2.0 (code).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {split: self._generate_examples(split) for split in ("train", "validation", "test")}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    config: ShapesConfig = self.builder_config
    colours = config.caption_colours
    for index in range(config.num_scenes):
      scene = sample_scene(config.seed, index, colours)
      if split_of(scene.canonical_wording(colours)) != split:
        continue
      yield f"{index:06d}", {
          "image": png_bytes(render_scene(scene)), "caption": scene.wording(colours),
          "group": scene.group_of(colours), **labels_of(scene),
      }
