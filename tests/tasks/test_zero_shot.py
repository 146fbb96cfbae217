"""Zero-shot classification against a hand-written numpy reference."""

import zlib

import numpy as np
import pytest

from mmalign.tasks import zero_shot

DIM = 8


def _fake_embed(texts):
  """A deterministic vector per string, with norms far from 1 (as raw encoders give)."""
  rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=DIM) *
          (1 + len(t) % 5) for t in texts]
  return np.stack(rows).astype(np.float32)


class _CountingEmbed:
  def __init__(self):
    self.calls = []

  def __call__(self, texts):
    self.calls.append(list(texts))
    return _fake_embed(texts)


def _reference_class_embeddings(names, templates):
  out = []
  for name in names:
    vectors = []
    for template in templates:
      v = _fake_embed([template.replace("{}", name)])[0].astype(np.float64)
      vectors.append(v / np.sqrt(np.sum(v * v)))
    mean = np.mean(vectors, axis=0)
    out.append(mean / np.sqrt(np.sum(mean * mean)))
  return np.array(out)


def test_class_embeddings_match_a_loop_reference_in_one_encoder_call():
  names = ["circle", "square", "star"]
  templates = ["a {}", "a small red {}", "a large {} on white", "{}"]
  embed = _CountingEmbed()
  got = zero_shot.class_embeddings(embed, names, templates)
  np.testing.assert_allclose(got, _reference_class_embeddings(names, templates), atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  assert len(embed.calls) == 1 and len(embed.calls[0]) == 12


def test_prompt_ensemble_allows_a_different_number_of_prompts_per_class():
  prompts = [["a", "b", "c"], ["d"]]
  got = zero_shot.prompt_ensemble(_fake_embed, prompts)
  def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)

  expected = np.stack([unit(unit(_fake_embed(p)).mean(axis=0)) for p in prompts])
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_logits_are_scaled_cosines():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(5, DIM)) * 3
  classes = rng.normal(size=(4, DIM))
  got = zero_shot.zero_shot_logits(images, classes, scale=10.0)
  for n in range(5):
    for c in range(4):
      cosine = images[n] @ classes[c] / np.linalg.norm(images[n]) / np.linalg.norm(classes[c])
      assert got[n, c] == pytest.approx(10.0 * cosine, abs=1e-5)
  np.testing.assert_array_equal(zero_shot.zero_shot_predict(images, classes),
                                got.argmax(axis=1))


def test_words_shared_by_every_class_cancel_out():
  """Text vectors are sums of word vectors; an image is its shape's word plus noise and
  some colour. Ensembling over colours leaves the shape direction, so images are found."""
  rng = np.random.default_rng(0)
  words = ("a", "red", "blue", "green", "circle", "square", "star", "triangle")
  vocab = {w: rng.normal(size=32) for w in words}

  def embed(texts):
    return np.stack([sum(vocab[w] for w in t.split()) for t in texts])

  shapes = ["circle", "square", "star", "triangle"]
  classes = zero_shot.class_embeddings(embed, shapes, ["a red {}", "a blue {}", "a green {}"])
  labels = rng.integers(4, size=200)
  colours = rng.choice(["red", "blue", "green"], size=200)
  images = np.stack([vocab[shapes[k]] + vocab[c] for k, c in zip(labels, colours)])
  images += rng.normal(size=images.shape)
  assert np.mean(zero_shot.zero_shot_predict(images, classes) == labels) > 0.9


@pytest.mark.parametrize("call, culprit", [
    (lambda: zero_shot.class_embeddings(_fake_embed, ["x"], ["no slot"]), "no '{}'"),
    (lambda: zero_shot.class_embeddings(_fake_embed, [], ["{}"]), "class_names is empty"),
    (lambda: zero_shot.class_embeddings(_fake_embed, ["x"], []), "templates is empty"),
    (lambda: zero_shot.prompt_ensemble(_fake_embed, [["a"], []]), r"prompts_per_class\[1\]"),
    (lambda: zero_shot.prompt_ensemble(lambda t: np.zeros((1, 3)), [["a", "b"]]),
     r"returned shape \(1, 3\) for 2 prompts"),
    (lambda: zero_shot.prompt_ensemble(lambda t: np.zeros((len(t), 3)), [["a"]]), "zero row"),
    (lambda: zero_shot.zero_shot_logits(np.ones((2, 3)), np.ones((2, 4))), "dim 3"),
])
def test_bad_input_names_the_culprit(call, culprit):
  with pytest.raises(ValueError, match=culprit):
    call()
