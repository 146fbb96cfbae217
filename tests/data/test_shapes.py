"""The shapes builder: scenes, captions, labels, groups and the built splits."""

import dataclasses
import socket

import numpy as np
import pytest

from mmalign.data import sources
from mmalign.data.builders import shapes
from mmalign.data.split import split_of

SPLITS = ("train", "validation", "test")
TINY_SCENES = 300
LABELS = ("shape1", "color1", "size1", "shape2", "color2", "size2", "relation")


def _no_network(*args, **kwargs):
  raise AssertionError("the build touched the network")


def _build(data_dir) -> object:
  """Builds tiny with every socket refused, so a download attempt fails the test."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket, "getaddrinfo", _no_network)
    builder = sources.get_builder("shapes", "tiny", str(data_dir))
    sources.ensure_built(builder)
  return builder


def _read(builder, split, decode_images=True) -> list[dict]:
  source = sources.open_split(builder, split, decode_images=decode_images)
  return [source[i] for i in range(len(source))]


def _caption_from_labels(builder, ex) -> str:
  """Rebuilds the caption from the stored labels alone."""
  name = {key: builder.info.features[key].int2str(ex[key]) for key in LABELS}
  first = f"a {name['size1']} {name['color1']} {name['shape1']}"
  if ex["num_shapes"] == 1:
    assert name["shape2"] == name["color2"] == name["size2"] == name["relation"] == "none"
    return first
  return f"{first} {name['relation']} a {name['size2']} {name['color2']} {name['shape2']}"


def _centroid(image, rgb) -> np.ndarray:
  """(x, y) centre of the pixels close to `rgb`."""
  close = np.abs(image.astype(int) - np.array(rgb)).max(axis=-1) < 30
  rows, cols = np.nonzero(close)
  return np.array([cols.mean(), rows.mean()])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("tfds"))


def test_scenes_are_a_function_of_seed_and_index():
  assert shapes.sample_scene(0, 7) == shapes.sample_scene(0, 7)
  assert shapes.sample_scene(0, 7) != shapes.sample_scene(1, 7)
  np.testing.assert_array_equal(shapes.render_scene(shapes.sample_scene(0, 7)),
                                shapes.render_scene(shapes.sample_scene(0, 7)))


def _red_circle_and_blue_square():
  """Two things and a geometry for hand-built scenes: (a, b, Scene keyword arguments)."""
  a = shapes.Thing("circle", "red", "small")
  b = shapes.Thing("square", "blue", "large")
  geometry = dict(centres=((10.0, 10.0), (40.0, 40.0)), extents=(12.0, 24.0),
                  rgbs=((215, 35, 35), (35, 85, 215)))
  return a, b, geometry


def test_mirrored_captions_share_group_and_split():
  a, b, geometry = _red_circle_and_blue_square()
  above = shapes.Scene((a, b), "above", **geometry)
  below = shapes.Scene((b, a), "below", **geometry)
  left = shapes.Scene((a, b), "left of", **geometry)
  assert above.caption == "a small red circle above a large blue square"
  assert below.caption == "a large blue square below a small red circle"
  assert above.canonical_caption == below.canonical_caption == above.caption
  assert above.group == below.group != left.group
  single = shapes.Scene((a,), shapes.NONE, ((30.0, 30.0),), (12.0,), ((215, 35, 35),))
  assert single.caption == "a small red circle"
  assert len({above.group, left.group, single.group}) == 3


def test_group_is_one_to_one_with_canonical_caption():
  scenes = [shapes.sample_scene(0, i) for i in range(2000)]
  by_group = {}
  for scene in scenes:
    by_group.setdefault(scene.group, set()).add(scene.canonical_caption)
  assert all(len(captions) == 1 for captions in by_group.values())
  assert len(by_group) == len({s.canonical_caption for s in scenes})


def test_counts_add_up_to_the_generated_scenes(built):
  counts = {split: built.info.splits[split].num_examples for split in SPLITS}
  assert all(n > 0 for n in counts.values()), counts
  assert sum(counts.values()) == TINY_SCENES
  expected = [split_of(shapes.sample_scene(0, i).canonical_caption) for i in range(TINY_SCENES)]
  for split in SPLITS:
    assert counts[split] == expected.count(split)


def test_no_caption_or_group_in_two_splits(built):
  seen = {}
  for split in SPLITS:
    examples = _read(built, split, decode_images=False)
    captions = {ex["caption"].decode() for ex in examples}
    groups = {ex["group"] for ex in examples}
    for other, (other_captions, other_groups) in seen.items():
      assert not captions & other_captions, (split, other)
      assert not groups & other_groups, (split, other)
    seen[split] = (captions, groups)


def test_captions_agree_with_labels_and_pixels(built):
  examples = _read(built, "train")
  assert {ex["num_shapes"] for ex in examples} == {1, 2}
  for ex in examples[:60]:
    image = ex["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image < 240).any(axis=-1).mean() > 0.01  # Not blank.
    assert ex["caption"].decode() == _caption_from_labels(built, ex)
  # The relation holds in the pixels, where the two colours tell the shapes apart.
  checked = 0
  for index in range(TINY_SCENES):
    scene = shapes.sample_scene(0, index)
    if len(scene.things) < 2 or scene.things[0].color == scene.things[1].color:
      continue
    image = shapes.render_scene(scene)
    dx, dy = _centroid(image, scene.rgbs[1]) - _centroid(image, scene.rgbs[0])  # 1 -> 2.
    expected = {"above": dy > 0, "below": dy < 0, "left of": dx > 0, "right of": dx < 0}
    assert expected[scene.relation], (index, scene.caption, dx, dy)
    vertical = scene.relation in ("above", "below")
    assert (abs(dy) > abs(dx)) == vertical, (index, scene.caption)
    checked += 1
  assert checked > 100


def test_build_is_deterministic(built, tmp_path):
  again = _build(tmp_path)
  for split in SPLITS:
    first, second = _read(built, split), _read(again, split)
    assert len(first) == len(second)
    for a, b in zip(first, second):
      assert a["caption"] == b["caption"] and a["group"] == b["group"]
      assert all(a[key] == b[key] for key in LABELS)
      np.testing.assert_array_equal(a["image"], b["image"])


# -------------------------------------------------------- colourless captions


@pytest.fixture(scope="module")
def colourless(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket, "getaddrinfo", _no_network)
    builder = sources.get_builder("shapes", "tiny_colourless",
                                  str(tmp_path_factory.mktemp("tfds_colourless")))
    sources.ensure_built(builder)
  return builder


def test_colourless_wording_drops_only_the_colour_words():
  a, b, geometry = _red_circle_and_blue_square()
  below = shapes.Scene((b, a), "below", **geometry)
  assert below.wording(colours=False) == "a large square below a small circle"
  assert below.canonical_wording(colours=False) == "a small circle above a large square"
  recoloured = shapes.Scene((dataclasses.replace(b, color="green"), a), "below", **geometry)
  assert recoloured.group_of(colours=False) == below.group_of(colours=False)
  assert recoloured.group != below.group


def test_colourless_scenes_single_out_the_first_shape():
  """Two things never share both shape and size, so the caption picks one of them."""
  two = [s for s in (shapes.sample_scene(0, i, colours=False) for i in range(2000))
         if len(s.things) == 2]
  assert len(two) > 1000
  assert all((s.things[0].shape, s.things[0].size) != (s.things[1].shape, s.things[1].size)
             for s in two)
  # The default (coloured) scenes are untouched by the option.
  assert shapes.sample_scene(0, 5) == shapes.sample_scene(0, 5, colours=True)


def test_colourless_build_keeps_colour_labels_but_no_colour_words(colourless):
  counts = {split: colourless.info.splits[split].num_examples for split in SPLITS}
  assert sum(counts.values()) == TINY_SCENES and all(counts.values()), counts
  colour_words = set(shapes.COLORS)
  seen = {}
  for split in SPLITS:
    examples = _read(colourless, split, decode_images=False)
    captions = {ex["caption"].decode() for ex in examples}
    assert not any(colour_words & set(c.split()) for c in captions), split
    for ex in examples:
      scene_caption = _caption_from_labels(colourless, ex)
      assert ex["caption"].decode() == " ".join(
          w for w in scene_caption.split() if w not in colour_words)
    groups = {ex["group"] for ex in examples}
    for other, (other_captions, other_groups) in seen.items():
      assert not captions & other_captions and not groups & other_groups, (split, other)
    seen[split] = (captions, groups)
  train = _read(colourless, "train", decode_images=False)
  color1 = colourless.info.features["color1"]
  assert {color1.int2str(ex["color1"]) for ex in train} == colour_words
