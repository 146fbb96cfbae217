"""shapes task definitions: matching pairs that no single modality can solve, tags, prompts."""

import collections

import numpy as np
import pytest

from mmalign.data.builders import shapes
from mmalign.errors import UsageError
from mmalign.tasks import shapes_tasks as st


def _scenes(num, seed=0):
  return [shapes.sample_scene(seed, i) for i in range(num)]


def _labels(scenes):
  """The stored label ids, computed from the scenes as the builder does."""
  rows = [shapes.labels_of(s) for s in scenes]
  out = {"num_shapes": np.array([r["num_shapes"] for r in rows])}
  for key, names in st.LABEL_NAMES.items():
    out[key] = np.array([names.index(r[key]) for r in rows])
  return out


@pytest.fixture(scope="module")
def scenes():
  return _scenes(1500)


@pytest.mark.parametrize("negatives", sorted(st.NEGATIVE_KEYS))
def test_single_modalities_carry_no_information(scenes, negatives):
  groups = np.array([s.group for s in scenes])
  captions = np.array([s.caption for s in scenes])
  pairs = st.matching_pairs(groups, _labels(scenes), np.random.default_rng(0),
                            negatives=negatives)
  assert len(pairs.label) == 2 * len(scenes) and pairs.label.mean() == 0.5
  np.testing.assert_array_equal(pairs.label, groups[pairs.image_index] ==
                                groups[pairs.caption_index])
  # Every image, and every caption string, occurs as often with label 1 as with 0 ...
  for keys in (pairs.image_index, captions[pairs.caption_index]):
    counts = collections.Counter(zip(keys, pairs.label))
    assert all(counts[(k, 1)] == counts[(k, 0)] for k, _ in counts)
  # ... so any classifier of one modality alone is right exactly half of the time.
  rng = np.random.default_rng(1)
  guess_of_caption = {c: rng.integers(2) for c in set(captions)}
  guesses = np.array([guess_of_caption[c] for c in captions[pairs.caption_index]])
  assert np.mean(guesses == pairs.label) == 0.5
  guesses = rng.integers(2, size=len(scenes))[pairs.image_index]
  assert np.mean(guesses == pairs.label) == 0.5


def test_negative_captions_are_false_and_hard(scenes):
  labels = _labels(scenes)
  groups = np.array([s.group for s in scenes])
  pairs = st.matching_pairs(groups, labels, np.random.default_rng(0))
  negative = pairs.label == 0
  for i, j in zip(pairs.image_index[negative], pairs.caption_index[negative]):
    assert scenes[i].canonical_caption != scenes[j].canonical_caption
  keys = st.NEGATIVE_KEYS["colors"](labels)
  same = np.all(keys[pairs.image_index[negative]] == keys[pairs.caption_index[negative]], axis=1)
  assert same.mean() > 0.9  # Same number of shapes and colours, nearly always.
  shuffled = st.matching_pairs(groups, labels, np.random.default_rng(0), negatives="random")
  neg = shuffled.label == 0
  random_same = np.all(keys[shuffled.image_index[neg]] == keys[shuffled.caption_index[neg]],
                       axis=1)
  assert random_same.mean() < 0.2


def test_partners_form_a_permutation_even_with_a_large_group():
  rng = np.random.default_rng(0)
  groups = np.concatenate([np.zeros(40, int), np.arange(1, 61)])  # Group 0: 40 of 100.
  keys = rng.integers(3, size=(61, 1))[groups]
  partner = st.negative_partners(groups, keys, rng)
  assert sorted(partner) == list(range(100))
  assert np.all(groups[partner] != groups)


@pytest.mark.parametrize("groups, culprit", [
    (np.array([0, 0, 0, 1]), "more than half"),
    (np.zeros(4, int), "at least two groups"),
])
def test_impossible_pairings_are_refused(groups, culprit):
  with pytest.raises(ValueError, match=culprit):
    st.negative_partners(groups, np.zeros((4, 1)), np.random.default_rng(0))


def test_keys_must_be_constant_within_a_group():
  with pytest.raises(ValueError, match="differ within a group"):
    st.negative_partners(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 0]),
                         np.random.default_rng(0))


def test_matching_pairs_rejects_bad_input(scenes):
  labels = _labels(scenes[:10])
  groups = np.array([s.group for s in scenes[:10]])
  with pytest.raises(UsageError, match="unknown negatives 'hard'; known: random, colors"):
    st.matching_pairs(groups, labels, np.random.default_rng(0), negatives="hard")
  with pytest.raises(ValueError, match=r"groups must have shape \(10,\)"):
    st.matching_pairs(groups[:5], labels, np.random.default_rng(0))
  with pytest.raises(ValueError, match="labels lack relation"):
    st.matching_pairs(groups, {k: v for k, v in labels.items() if k != "relation"},
                      np.random.default_rng(0))


def test_tags_are_what_the_scene_shows(scenes):
  tags = st.tags_of(_labels(scenes))
  for scene, row in zip(scenes, tags):
    expected = {t.shape for t in scene.things} | {t.color for t in scene.things} | {
        t.size for t in scene.things}
    if scene.relation in ("above", "below"):
      expected.add("stacked")
    elif scene.relation != shapes.NONE:
      expected.add("side by side")
    assert {st.TAGS[k] for k in np.flatnonzero(row)} == expected, scene.caption


def test_tag_prompts_state_their_tag():
  assert len(st.tag_prompts("circle")) == 12 and len(st.tag_prompts("red")) == 10
  assert all("small" in p.split() for p in st.tag_prompts("small"))
  stacked = st.tag_prompts("stacked")
  assert len(stacked) == 2 * 60 and all(" above a " in p or " below a " in p for p in stacked)
  with pytest.raises(ValueError, match="unknown tag 'big'"):
    st.tag_prompts("big")


def test_shape_classes_and_templates():
  assert len(st.SHAPE_TEMPLATES) == 12 and all("{}" in t for t in st.SHAPE_TEMPLATES)
  labels = _labels(_scenes(50))
  targets = st.shape_targets(labels)
  np.testing.assert_array_equal(np.array(st.SHAPE_CLASSES)[targets],
                                np.array(shapes.SHAPE_NAMES)[labels["shape1"]])
  assert st.one_shape(labels).sum() == np.sum(labels["relation"] == 0)
  ids, names = st.attribute_labels(labels, "num_shapes")
  assert set(ids) <= {0, 1} and names == ("one", "two")
  with pytest.raises(UsageError, match="unknown attribute 'hue'"):
    st.attribute_labels(labels, "hue")


def test_read_split_from_a_source():
  scenes = _scenes(5)
  source = [{"caption": s.caption.encode(), "group": s.group, **{
      k: v[i] for k, v in _labels(scenes).items()}} for i, s in enumerate(scenes)]
  split = st.read_split(source)
  assert split.captions == [s.caption for s in scenes] and len(split) == 5
  np.testing.assert_array_equal(split.groups, [s.group for s in scenes])
  del source[3]["shape2"]
  with pytest.raises(UsageError, match="example 3 has no feature 'shape2'"):
    st.read_split(source)


def _oracle_embeddings(scenes, rng, projection, noise):
  """Both modalities see the scene's canonical attributes through one random projection,
  each with its own noise: what a perfectly aligned dual encoder would give."""
  rows = []
  for scene in scenes:
    things, relation = scene.canonical()
    code = np.zeros(projection.shape[0])
    for k, thing in enumerate(things):
      for offset, (names, value) in zip((0, 6, 13), ((shapes.SHAPE_NAMES, thing.shape),
                                                      (shapes.COLOR_NAMES, thing.color),
                                                      (shapes.SIZE_NAMES, thing.size))):
        code[16 * k + offset + names.index(value)] = 1
    code[32 + shapes.RELATION_NAMES.index(relation)] = 1
    rows.append(code)
  clean = np.array(rows) @ projection  # [n, d]
  return [clean + noise * rng.normal(size=clean.shape) for _ in range(2)]  # text, image


def test_fused_probe_beats_both_single_modalities_on_shapes_matching():
  """The acceptance criterion with ideal embeddings: only comparing the two modalities
  tells a caption of the same colours from the true one."""
  from mmalign.tasks import probe as probe_lib  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  projection = rng.normal(size=(37, 24))
  accuracy = {}
  data = {}
  for name, indices in (("train", range(2000)), ("test", range(2000, 2600))):
    scenes = [shapes.sample_scene(0, i) for i in indices]
    text, image = _oracle_embeddings(scenes, rng, projection, noise=0.3)
    pairs = st.matching_pairs(np.array([s.group for s in scenes]), _labels(scenes), rng)
    data[name] = (text[pairs.caption_index], image[pairs.image_index], pairs.label)
  for inp in ("text", "image", "fused"):
    probe = probe_lib.train_probe(probe_lib.probe_features(inp, *data["train"][:2]),
                                  data["train"][2], 2, hidden=(64,), steps=600,
                                  learning_rate=3e-3, batch_size=512)
    predictions = probe.predict(probe_lib.probe_features(inp, *data["test"][:2]))
    accuracy[inp] = np.mean(predictions == data["test"][2])
  assert accuracy["text"] == accuracy["image"] == 0.5
  assert accuracy["fused"] > 0.85, accuracy
