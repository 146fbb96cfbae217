"""data.sampling: "images" batches on a fake in-memory source; "captions" is TrainBatches."""

import numpy as np
import pytest

from mmalign.data import pipeline, sampling
from mmalign.errors import UsageError

NUM_GROUPS, NUM_EXAMPLES = 6, 30  # 5 images per caption: batches repeat captions.
IDENTITY = pipeline.ImageNormalization(mean=(0.0,), std=(1.0,))


def _group_of(i: int) -> int:
  return 500 - 11 * ((5 * i) % NUM_GROUPS)  # Not sorted, not contiguous.


def _caption(group: int) -> str:
  return f"glyph {group} of {['ab', 'cd', 'ef', 'gh'][group % 4]}"

TOKENIZER_VOCAB = 40


@pytest.fixture(scope="module")
def source():
  """Example i: group _group_of(i), every pixel equal to i (images name examples)."""
  return [{"image": np.full((4, 4, 1), i, np.uint8), "caption": _caption(_group_of(i)).encode(),
           "group": np.int64(_group_of(i))} for i in range(NUM_EXAMPLES)]


def _ids(images: np.ndarray) -> np.ndarray:
  return np.rint(images[:, 0, 0, 0] * 255).astype(int)


def _images(source, index, tokenizer, **kwargs) -> sampling.ImageBatches:
  settings = {"global_batch": 8, "seed": 3, "normalization": IDENTITY, "process_index": 0,
              "process_count": 1}
  settings.update(kwargs)
  return sampling.train_batches("images", source, index, tokenizer, **settings)


@pytest.mark.parametrize("batch", [4, 8, 24])  # T = min(batch, 6): below and at the cap.
def test_images_are_distinct_and_point_at_their_own_caption(source, index, tokenizer, batch):
  batches = _images(source, index, tokenizer, global_batch=batch)
  rows = min(batch, NUM_GROUPS)
  assert batches.text_rows == rows
  for step in range(5):
    b = batches(step)
    ids = _ids(b["images"])
    assert b["images"].shape == (batch, 4, 4, 1) and b["tokens"].shape == (rows, 6)
    assert len(set(ids.tolist())) == batch  # Distinct images.
    assert b["groups"].tolist() == [_group_of(i) for i in ids]
    assert b["image_to_text"].dtype == np.int32
    assert ((0 <= b["image_to_text"]) & (b["image_to_text"] < rows)).all()
    # Text rows are distinct captions, and each image's row holds its own caption.
    assert len({tuple(t) for t in b["tokens"]}) == rows
    np.testing.assert_array_equal(b["tokens"][b["image_to_text"]],
                                  tokenizer.encode([_caption(_group_of(i)) for i in ids]))


def test_repeated_captions_share_one_text_row(source, index, tokenizer):
  b = _images(source, index, tokenizer, global_batch=24)(0)
  groups = b["groups"]
  assert len(set(groups.tolist())) < len(groups)  # The case this mode exists for.
  for i in range(len(groups)):
    for j in range(len(groups)):
      assert (b["image_to_text"][i] == b["image_to_text"][j]) == (groups[i] == groups[j])


def test_extra_text_rows_are_captions_not_in_the_batch(source, index, tokenizer):
  batches = _images(source, index, tokenizer, global_batch=4)
  seen_extra = 0
  for step in range(8):
    b = batches(step)
    own = set(b["image_to_text"].tolist())
    extra = [r for r in range(4) if r not in own]
    assert sorted(own) == list(range(len(own)))  # The batch's own captions come first.
    all_tokens = {tuple(t): g for t, g in zip(tokenizer.encode(index.group_captions),
                                              index.group_ids)}
    extra_groups = {all_tokens[tuple(b["tokens"][r])] for r in extra}
    assert not extra_groups & set(b["groups"].tolist())
    seen_extra += len(extra)
  assert seen_extra > 0


def test_batch_is_a_function_of_seed_and_step(source, index, tokenizer):
  first, second = _images(source, index, tokenizer), _images(source, index, tokenizer)
  for step in (0, 7, 2):
    a, b = first(step), second(step)
    assert sorted(a) == ["groups", "image_to_text", "images", "tokens"]
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other = _images(source, index, tokenizer, seed=4)
  assert any((_ids(first(s)["images"]) != _ids(other(s)["images"])).any() for s in range(3))


def test_each_epoch_is_a_permutation_of_the_images(source, index, tokenizer):
  batches = _images(source, index, tokenizer)
  assert batches.steps_per_epoch == NUM_EXAMPLES // 8
  epochs = []
  for epoch in range(2):
    ids = np.concatenate([_ids(batches(s)["images"]) for s in
                          range(epoch * 3, (epoch + 1) * 3)]).tolist()
    assert len(ids) == len(set(ids)) == 24
    epochs.append(ids)
  assert epochs[0] != epochs[1]


@pytest.mark.parametrize("batch, max_shift", [(4, 0), (8, 0), (24, 1)])
def test_process_halves_concatenate_to_the_global_batch(source, index, tokenizer, batch,
                                                        max_shift):
  whole = _images(source, index, tokenizer, global_batch=batch, max_shift=max_shift)
  halves = [_images(source, index, tokenizer, global_batch=batch, max_shift=max_shift,
                    process_index=p, process_count=2) for p in range(2)]
  for step in range(4):
    parts, expected = [h(step) for h in halves], whole(step)
    assert [len(p["tokens"]) for p in parts] == [min(batch, NUM_GROUPS) // 2] * 2
    for key in ("tokens", "images", "groups", "image_to_text"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])


def test_shift_translates_the_images(source, index, tokenizer):
  plain = _images(source, index, tokenizer)(1)
  shifted = _images(source, index, tokenizer, max_shift=1)(1)
  # Fake images are constant, so a shift changes no pixel and no choice.
  for key in plain:
    np.testing.assert_array_equal(shifted[key], plain[key])


def test_train_iterator_serves_image_batches_in_step_order(source, index, tokenizer):
  batches = _images(source, index, tokenizer)
  got = list(pipeline.train_iterator(batches, start_step=2, num_steps=5))
  for step, batch in zip(range(2, 5), got, strict=True):
    for key, value in batches(step).items():
      np.testing.assert_array_equal(batch[key], value)


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": np.zeros(NUM_EXAMPLES)}, "task.label"),
    ({"noisy_pair_fraction": 0.25}, "data.noisy_pair_fraction"),
    ({"global_batch": NUM_EXAMPLES + 1}, f"train.batch_size={NUM_EXAMPLES + 1}"),
    ({"global_batch": 18, "process_count": 4}, "18 images"),
])
def test_unsupported_image_batches_are_usage_errors(source, index, tokenizer, kwargs, match):
  with pytest.raises(UsageError, match=match):
    _images(source, index, tokenizer, **kwargs)


def test_text_rows_must_divide_among_processes(source, index, tokenizer):
  # 12 images split in 4, but the 6 capped text rows do not.
  with pytest.raises(UsageError, match="6 text rows"):
    _images(source, index, tokenizer, global_batch=12, process_count=4)


def test_unknown_sampling_is_named(source, index, tokenizer):
  with pytest.raises(UsageError, match="data.sampling"):
    sampling.train_batches("pixels", source, index, tokenizer, global_batch=4, seed=0,
                           normalization=IDENTITY)


def test_captions_sampling_is_train_batches_unchanged(source, index, tokenizer):
  settings = {"global_batch": 4, "seed": 3, "normalization": IDENTITY, "process_index": 0,
              "process_count": 1}
  chosen = sampling.train_batches("captions", source, index, tokenizer, **settings)
  assert type(chosen) is pipeline.TrainBatches
  direct = pipeline.TrainBatches(source, index, tokenizer, **settings)
  for step in range(3):
    a, b = chosen(step), direct(step)
    assert sorted(a) == ["groups", "images", "tokens"]  # No image_to_text.
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_every_batcher_says_whether_images_point_at_text_rows():
  """The trainer hands `image_rows` to build_objective; a batcher without it cannot train."""
  flags = {name: sampling.SAMPLINGS.get(name).image_rows for name in sampling.SAMPLINGS.names()}
  assert flags == {"captions": False, "images": True}
