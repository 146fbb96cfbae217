"""Input pipeline on a fake in-memory source: index, batches, sharding, resume."""

import os

import numpy as np
import pytest

from mmalign.data import pipeline
from mmalign.errors import UsageError

NUM_GROUPS = 13
IDENTITY = pipeline.ImageNormalization(mean=(0.0,), std=(1.0,))


def _group_of(i: int) -> int:
  return 1000 - 7 * (i % NUM_GROUPS)  # Not sorted, not contiguous.


def _fake_source(num_examples: int = 32) -> list[dict]:
  """Example i has group _group_of(i) and every pixel equal to i, so images name examples."""
  return [{"image": np.full((8, 8, 1), i, np.uint8),
           "caption": f"thing number {_group_of(i)}".encode(),
           "group": np.int64(_group_of(i))} for i in range(num_examples)]


def _example_ids(images: np.ndarray) -> np.ndarray:
  """Recovers example indices from images normalised with IDENTITY."""
  return np.rint(images[:, 0, 0, 0] * 255).astype(int)


@pytest.fixture(scope="module")
def source():
  return _fake_source()


def _batches(source, index, tokenizer, **kwargs) -> pipeline.TrainBatches:
  settings = dict(global_batch=4, seed=3, normalization=IDENTITY, process_index=0,
                  process_count=1)
  settings.update(kwargs)
  return pipeline.TrainBatches(source, index, tokenizer, **settings)


def test_index_split_matches_plain_python(source, index):
  members: dict[int, list[int]] = {}
  captions: dict[int, str] = {}
  for i, example in enumerate(source):
    members.setdefault(int(example["group"]), []).append(i)
    captions[int(example["group"])] = example["caption"].decode()
  assert index.num_groups == NUM_GROUPS
  assert index.group_ids.tolist() == sorted(members)
  assert index.group_captions == [captions[g] for g in sorted(members)]
  assert [m.tolist() for m in index.members] == [members[g] for g in sorted(members)]
  assert index.groups.tolist() == [int(e["group"]) for e in source]


def test_index_split_accepts_str_captions():
  source = [{"caption": "a", "group": 5}, {"caption": "b", "group": 2},
            {"caption": "a", "group": 5}]
  index = pipeline.index_split(source)
  assert index.group_ids.tolist() == [2, 5]
  assert index.group_captions == ["b", "a"]
  assert [m.tolist() for m in index.members] == [[1], [0, 2]]


def test_a_group_worded_two_ways_keeps_every_wording():
  source = [{"caption": b"b below a", "group": 1}, {"caption": b"a above b", "group": 1},
            {"caption": b"c", "group": 0}, {"caption": b"a above b", "group": 1}]
  index = pipeline.index_split(source)
  assert index.group_captions == ["c", "b below a"]  # Its first example's wording.
  assert index.captions == ["b below a", "a above b", "c", "a above b"]
  assert index.tokenizer_corpus == ["c", "b below a", "a above b"]


def test_text_of_decodes_bytes():
  assert pipeline.text_of("caf\u00e9".encode()) == "caf\u00e9"
  assert pipeline.text_of("plain") == "plain"


def test_batch_holds_distinct_groups_with_matching_tokens_and_images(source, index, tokenizer):
  batches = _batches(source, index, tokenizer)
  for step in range(6):
    batch = batches(step)
    assert batch["images"].shape == (4, 8, 8, 1) and batch["images"].dtype == np.float32
    assert batch["tokens"].shape == (4, 6)
    assert len(set(batch["groups"].tolist())) == 4
    # Each image is a member of its group, each token row encodes its group's caption.
    assert [_group_of(i) for i in _example_ids(batch["images"])] == batch["groups"].tolist()
    expected = tokenizer.encode([f"thing number {g}" for g in batch["groups"]])
    np.testing.assert_array_equal(batch["tokens"], expected)


def test_batch_is_a_function_of_seed_and_step(source, index, tokenizer):
  first, second = _batches(source, index, tokenizer), _batches(source, index, tokenizer)
  for step in (0, 5, 2):
    a, b = first(step), second(step)
    for key in ("tokens", "images", "groups"):
      np.testing.assert_array_equal(a[key], b[key])
  other_seed = _batches(source, index, tokenizer, seed=4)
  assert any((first(s)["groups"] != other_seed(s)["groups"]).any() for s in range(3))


def test_each_epoch_covers_distinct_groups(source, index, tokenizer):
  batches = _batches(source, index, tokenizer)
  assert batches.steps_per_epoch == NUM_GROUPS // 4  # The partial batch is dropped.
  epochs = []
  for epoch in range(3):
    steps = range(epoch * batches.steps_per_epoch, (epoch + 1) * batches.steps_per_epoch)
    groups = np.concatenate([batches(s)["groups"] for s in steps]).tolist()
    assert len(groups) == len(set(groups)) == 4 * batches.steps_per_epoch
    assert set(groups) <= set(index.group_ids.tolist())
    epochs.append(groups)
  assert epochs[0] != epochs[1]  # A fresh permutation per epoch.


def test_group_positions_permute_groups_within_an_epoch(source, index, tokenizer):
  batches = _batches(source, index, tokenizer, global_batch=3)
  positions = np.concatenate([batches.group_positions(s)
                              for s in range(batches.steps_per_epoch)])
  assert len(positions) == NUM_GROUPS // 3 * 3
  assert len(set(positions.tolist())) == len(positions)


def test_process_halves_concatenate_to_the_global_batch_groups(source, index, tokenizer):
  whole = _batches(source, index, tokenizer)
  halves = [_batches(source, index, tokenizer, process_index=p, process_count=2)
            for p in range(2)]
  for step in range(4):
    parts = [h(step) for h in halves]
    assert all(len(p["groups"]) == 2 for p in parts)
    for key in ("groups", "tokens"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole(step)[key])


def test_process_halves_concatenate_to_the_global_batch_images(source, index, tokenizer):
  whole = _batches(source, index, tokenizer)
  halves = [_batches(source, index, tokenizer, process_index=p, process_count=2)
            for p in range(2)]
  for step in range(4):
    images = np.concatenate([h(step)["images"] for h in halves])
    np.testing.assert_array_equal(_example_ids(images), _example_ids(whole(step)["images"]))


def test_process_halves_concatenate_to_the_global_batch_with_shifts(source, index, tokenizer):
  whole = _batches(source, index, tokenizer, max_shift=2)
  halves = [_batches(source, index, tokenizer, process_index=p, process_count=2, max_shift=2)
            for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([h(step)["images"] for h in halves]),
                                  whole(step)["images"])


def test_batch_size_not_divisible_by_process_count_is_a_usage_error(source, index, tokenizer):
  with pytest.raises(UsageError, match="train.batch_size=5"):
    _batches(source, index, tokenizer, global_batch=5, process_count=2)


def test_batch_larger_than_group_count_is_a_usage_error(source, index, tokenizer):
  _batches(source, index, tokenizer, global_batch=NUM_GROUPS)  # The largest allowed.
  with pytest.raises(UsageError, match=f"train.batch_size={NUM_GROUPS + 1}"):
    _batches(source, index, tokenizer, global_batch=NUM_GROUPS + 1)


def test_image_normalization_matches_numpy():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  got = pipeline.ImageNormalization(mean, std)(images)
  expected = (images.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  default = pipeline.ImageNormalization()(images)
  np.testing.assert_allclose(default, images / 255 * 2 - 1, rtol=1e-5, atol=1e-6)


PREPROCESS_IO = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures",
                             "pretrained", "clip_preprocess_io.npz")


@pytest.mark.parametrize("name", ["square", "wide", "tall", "grey"])
def test_resize_and_crop_is_clips_preprocessing(name):
  """Against torchvision's Resize(24, bicubic) + CenterCrop(24) on the same PIL image."""
  io = np.load(PREPROCESS_IO)
  np.testing.assert_array_equal(pipeline.resize_and_crop(io[name], 24), io[f"{name}_24"])


def test_image_size_resizes_and_a_grey_image_becomes_rgb_under_an_rgb_mean():
  io = np.load(PREPROCESS_IO)
  clip = pipeline.ImageNormalization((0.4, 0.5, 0.6), (0.2, 0.25, 0.3), size=24)
  assert clip.output_shape((50, 33, 1)) == (24, 24, 3)
  assert pipeline.ImageNormalization().output_shape((50, 33, 1)) == (50, 33, 1)
  got = clip(io["grey"][None])
  expected = (io["grey_24"][None] / 255 - np.array([0.4, 0.5, 0.6])) / np.array([0.2, 0.25, 0.3])
  assert got.shape == (1, 24, 24, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _assert_same_batches(got: list[dict], expected: list[dict]):
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_train_iterator_yields_batches_in_step_order(source, index, tokenizer):
  batches = _batches(source, index, tokenizer)
  full = list(pipeline.train_iterator(batches, start_step=0, num_steps=7))
  _assert_same_batches(full, [batches(s) for s in range(7)])
  resumed = list(pipeline.train_iterator(batches, start_step=4, num_steps=7))
  _assert_same_batches(resumed, full[4:])


def test_no_shift_when_max_shift_is_zero(source, index, tokenizer, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("shift_images called with max_shift=0")
  monkeypatch.setattr(pipeline, "shift_images", refuse)
  _batches(source, index, tokenizer, max_shift=0)(0)
  with pytest.raises(AssertionError, match="shift_images called"):
    _batches(source, index, tokenizer, max_shift=2)(0)


def test_random_shift_is_an_edge_padded_translation():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 5, 7, 2)).astype(np.float32)
  offsets = np.random.default_rng(1).integers(0, 5, size=(6, 2))
  shifted = pipeline.shift_images(images, 2, offsets)
  assert shifted.shape == images.shape and shifted.dtype == images.dtype
  moved = 0
  for original, out in zip(images, shifted):
    matches = []
    for dy in range(-2, 3):
      for dx in range(-2, 3):
        rows = np.clip(np.arange(5) + dy, 0, 4)
        cols = np.clip(np.arange(7) + dx, 0, 6)
        if np.array_equal(out, original[rows][:, cols]):
          matches.append((dy, dx))
    assert matches, "output is not a translation of its input"
    moved += (0, 0) not in matches
  assert moved > 0


def test_random_shift_of_zero_is_the_identity():
  images = np.arange(2 * 3 * 4).reshape(2, 3, 4, 1).astype(np.float32)
  np.testing.assert_array_equal(
      pipeline.shift_images(images, 0, np.zeros((2, 2), int)), images)


def test_shift_keeps_member_choice_and_shape(source, index, tokenizer):
  plain = _batches(source, index, tokenizer)(1)
  shifted = _batches(source, index, tokenizer, max_shift=2)(1)
  assert shifted["images"].shape == plain["images"].shape
  # Fake images are constant, so a shift changes nothing and the member must be the same.
  np.testing.assert_array_equal(shifted["images"], plain["images"])
  np.testing.assert_array_equal(shifted["groups"], plain["groups"])


def test_noisy_pairs_rotate_the_images_of_the_chosen_rows_only(source, index, tokenizer):
  clean = _batches(source, index, tokenizer, global_batch=8)
  noisy = _batches(source, index, tokenizer, global_batch=8, noisy_pair_fraction=0.5)
  for step in range(5):
    rows = noisy.noisy_rows(step)
    assert len(rows) == 4 and len(set(rows.tolist())) == 4
    clean_ids = _example_ids(clean(step)["images"])
    noisy_batch = noisy(step)
    noisy_ids = _example_ids(noisy_batch["images"])
    np.testing.assert_array_equal(noisy_batch["tokens"], clean(step)["tokens"])  # Captions stay.
    kept = np.setdiff1d(np.arange(8), rows)
    np.testing.assert_array_equal(noisy_ids[kept], clean_ids[kept])
    np.testing.assert_array_equal(noisy_ids[rows], clean_ids[np.roll(rows, 1)])
    groups = np.array([_group_of(i) for i in noisy_ids])
    assert (groups[rows] != noisy_batch["groups"][rows]).all()  # Every chosen pair is wrong.


def test_noisy_pairs_are_the_same_for_any_process_count(source, index, tokenizer):
  whole = _batches(source, index, tokenizer, global_batch=8, noisy_pair_fraction=0.5)(2)
  halves = [_batches(source, index, tokenizer, global_batch=8, noisy_pair_fraction=0.5,
                     process_index=p, process_count=2)(2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["images"] for h in halves]), whole["images"])


def test_noisy_pair_fraction_out_of_range_is_named(source, index, tokenizer):
  with pytest.raises(UsageError, match="data.noisy_pair_fraction"):
    _batches(source, index, tokenizer, noisy_pair_fraction=1.5)


def test_labels_follow_the_caption_example(source, index, tokenizer):
  labels = np.arange(len(source)) * 10  # Label of example i is 10·i.
  batch = _batches(source, index, tokenizer, global_batch=8, labels=labels)(1)
  np.testing.assert_array_equal(batch["labels"], 10 * _example_ids(batch["images"]))
  assert batch["labels"].dtype == np.int32


def test_read_labels_reads_the_feature(source):
  np.testing.assert_array_equal(pipeline.read_labels(source, "group"),
                                [_group_of(i) for i in range(len(source))])
