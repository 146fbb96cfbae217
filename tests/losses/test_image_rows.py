"""The objective of data.image_rows=True batches (images as rows, multi-positive texts)
against the definition in float64 numpy, its gradient by finite differences."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import logsumexp

from mmalign.errors import UsageError
from mmalign.losses.contrastive import symmetric_infonce
from mmalign.losses.objective import build_objective
from tests.finite_differences import numeric_gradient

B, T, D = 7, 4, 3
IMAGE_TO_TEXT = np.array([2, 0, 2, 1, 2, 0, 1], np.int32)  # Text 3 has no image: a negative.


def _config(impl: str = "reference", name: str = "infonce"):
  return ml_collections.ConfigDict({
      "name": name, "kwargs": {}, "matching_weight": 0.0,
      "kernel": {"impl": impl, "reference": {}, "xla_chunked": {"block_size": 3},
                 "pallas": {"block_n": 16, "block_m": 16}}})


def _embeddings(seed: int = 0):
  rng = np.random.default_rng(seed)
  text = rng.normal(size=(T, D))
  image = rng.normal(size=(B, D))
  return (text / np.linalg.norm(text, axis=1, keepdims=True),
          image / np.linalg.norm(image, axis=1, keepdims=True), 3.0)


def reference_loss(text, image, scale, image_to_text) -> float:
  """½ (mean over images of CE over all texts + mean over texts that have an image of
  logsumexp over all images − logsumexp over that text's images), in float64."""
  logits = scale * image @ text.T  # [B, T]
  rows = logsumexp(logits, axis=1) - logits[np.arange(len(image)), image_to_text]
  columns = [logsumexp(logits[:, j]) - logsumexp(logits[image_to_text == j, j])
             for j in sorted(set(image_to_text.tolist()))]
  return 0.5 * (rows.mean() + np.mean(columns))


def _objective_value_and_grads(config, text, image, scale):
  objective = build_objective(config, model_fuses=False, image_rows=True)
  batch = {"image_to_text": jnp.asarray(IMAGE_TO_TEXT)}

  def loss_of(t, i, s):
    return objective({"text_emb": t, "image_emb": i, "scale": s}, batch)[0]
  args = (jnp.asarray(text, jnp.float32), jnp.asarray(image, jnp.float32), jnp.float32(scale))
  return jax.value_and_grad(loss_of, argnums=(0, 1, 2))(*args)


@pytest.mark.parametrize("impl", ["reference", "xla_chunked", "pallas"])
def test_images_objective_matches_the_definition_value_and_gradient(impl):
  text, image, scale = _embeddings()
  loss, (d_text, d_image, d_scale) = _objective_value_and_grads(_config(impl), text, image,
                                                                scale)
  np.testing.assert_allclose(loss, reference_loss(text, image, scale, IMAGE_TO_TEXT),
                             rtol=1e-5)
  np.testing.assert_allclose(
      d_text, numeric_gradient(lambda t: reference_loss(t, image, scale, IMAGE_TO_TEXT), text),
      rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      d_image, numeric_gradient(lambda i: reference_loss(text, i, scale, IMAGE_TO_TEXT), image),
      rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      d_scale, numeric_gradient(lambda s: reference_loss(text, image, s, IMAGE_TO_TEXT), scale),
      rtol=1e-4, atol=1e-6)
  assert np.abs(d_text[3]).max() > 1e-3  # The image-less text is still pushed (negative).


def test_repeated_captions_are_not_negatives_of_each_other():
  # Treating the batch as B pairs with the diagonal (one text row per image, repeats
  # included) would count an image's caption copies as negatives: a larger loss.
  text, image, scale = _embeddings(1)
  loss, _ = _objective_value_and_grads(_config(), text, image, scale)
  diagonal = symmetric_infonce(jnp.asarray(text[IMAGE_TO_TEXT], jnp.float32),
                               jnp.asarray(image, jnp.float32), jnp.float32(scale))
  assert float(diagonal) > float(loss) + 0.1


def test_one_image_per_text_is_the_symmetric_infonce():
  rng = np.random.default_rng(2)
  text = jnp.asarray(rng.normal(size=(5, D)), jnp.float32)
  image = jnp.asarray(rng.normal(size=(5, D)), jnp.float32)
  image_to_text = np.array([3, 0, 4, 1, 2], np.int32)  # A permutation.
  objective = build_objective(_config("xla_chunked"), model_fuses=False, image_rows=True)
  loss, _ = objective({"text_emb": text, "image_emb": image, "scale": jnp.float32(2.0)},
                      {"image_to_text": jnp.asarray(image_to_text)})
  expected = symmetric_infonce(text[image_to_text], image, jnp.float32(2.0))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_modality_weights_apply_in_images_mode():
  text, image, scale = _embeddings(3)
  config = _config()
  _, (plain_text, plain_image, _) = _objective_value_and_grads(config, text, image, scale)
  config.modality_weights = {"text": 0.5, "image": 2.0}
  _, (d_text, d_image, _) = _objective_value_and_grads(config, text, image, scale)
  np.testing.assert_allclose(d_text, 0.5 * np.asarray(plain_text), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(d_image, 2.0 * np.asarray(plain_image), rtol=1e-5, atol=1e-7)


def test_captions_sampling_is_the_default_objective_bit_for_bit():
  rng = np.random.default_rng(4)
  outputs = {"text_emb": jnp.asarray(rng.normal(size=(6, D)), jnp.float32),
             "image_emb": jnp.asarray(rng.normal(size=(6, D)), jnp.float32),
             "scale": jnp.float32(2.0)}
  default, _ = build_objective(_config("xla_chunked"), model_fuses=False)(outputs, {})
  captions, _ = build_objective(_config("xla_chunked"), model_fuses=False,
                                image_rows=False)(outputs, {})
  direct = symmetric_infonce(outputs["text_emb"], outputs["image_emb"], outputs["scale"],
                             impl="xla_chunked", block_kwargs={"block_size": 3})
  assert float(default) == float(captions) == float(direct)


@pytest.mark.parametrize("change, kwargs, match", [
    ({"name": "sigmoid"}, {}, "loss.name='sigmoid'"),
    ({"distributed": "ring"}, {"mesh": object()}, "loss.distributed='ring'"),
    ({"matching_weight": 1.0}, {"model_fuses": True}, "model.fusion"),
    ({"task_weight": 1.0}, {"has_task": True}, "task.label"),
])
def test_unsupported_combinations_name_their_config_keys(change, kwargs, match):
  config = _config()
  config.update(change)
  with pytest.raises(UsageError, match=match) as error:
    build_objective(config, **{"model_fuses": False, **kwargs}, image_rows=True)
  assert "data.sampling='images'" in str(error.value)

