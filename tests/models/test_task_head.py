"""The task classifier on the fused pair: modality dropout and the missing-modality fallback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign.errors import UsageError
from mmalign.models.build import build_dual_encoder, resolved_model_config
from mmalign.models.dual_encoder import DualEncoder, sample_present
from tests.models.test_encoders import IMAGES, MAX_LENGTH, TOKENS, VOCAB, _model_config

NUM_CLASSES = 4


def _model(**overrides) -> DualEncoder:
  config = _model_config(fusion="concat", **overrides)
  return build_dual_encoder(config, vocab_size=VOCAB, max_length=MAX_LENGTH,
                            num_classes=NUM_CLASSES)


def test_class_logits_only_with_a_task():
  model = _model()
  variables = model.init(jax.random.PRNGKey(0), TOKENS, IMAGES)
  outputs = model.apply(variables, TOKENS, IMAGES)
  assert outputs["class_logits"].shape == (TOKENS.shape[0], NUM_CLASSES)
  plain = build_dual_encoder(_model_config(fusion="concat"), vocab_size=VOCAB,
                             max_length=MAX_LENGTH)
  assert "class_logits" not in plain.apply(plain.init(jax.random.PRNGKey(0), TOKENS, IMAGES),
                                           TOKENS, IMAGES)


def test_a_task_needs_fusion():
  with pytest.raises(UsageError, match="model.fusion"):
    build_dual_encoder(_model_config(), vocab_size=VOCAB, max_length=MAX_LENGTH, num_classes=3)


def test_num_classes_enters_the_checkpoint_config_only_when_set():
  config = _model_config(fusion="concat")
  assert "num_classes" not in resolved_model_config(config)
  assert resolved_model_config(config, 5)["num_classes"] == 5


def test_classify_with_a_modality_absent_ignores_it():
  model = _model()
  variables = model.init(jax.random.PRNGKey(0), TOKENS, IMAGES)
  other_images = IMAGES + jax.random.normal(jax.random.PRNGKey(1), IMAGES.shape)
  other_tokens = jnp.flip(TOKENS, axis=0)
  batch = TOKENS.shape[0]
  text_only = jnp.tile(jnp.array([[True, False]]), (batch, 1))
  image_only = jnp.tile(jnp.array([[False, True]]), (batch, 1))

  def classify(tokens, images, present):
    return model.apply(variables, tokens, images, present, method=DualEncoder.classify)

  np.testing.assert_allclose(classify(TOKENS, IMAGES, text_only),
                             classify(TOKENS, other_images, text_only), rtol=1e-6)
  np.testing.assert_allclose(classify(TOKENS, IMAGES, image_only),
                             classify(other_tokens, IMAGES, image_only), rtol=1e-6)
  assert not np.allclose(classify(TOKENS, IMAGES, None), classify(TOKENS, other_images, None))


def test_modality_dropout_hides_one_modality_at_the_configured_rate():
  batch = 4000
  present = np.asarray(sample_present(jax.random.PRNGKey(2), batch, 0.4))
  assert present.shape == (batch, 2)
  assert present.any(axis=1).all()  # Never both gone.
  dropped = ~present.all(axis=1)
  assert abs(dropped.mean() - 0.4) < 0.03
  assert abs((~present[:, 0]).sum() / dropped.sum() - 0.5) < 0.05  # Text or image, evenly.
  assert not np.array_equal(present, np.asarray(sample_present(jax.random.PRNGKey(3), batch,
                                                               0.4)))
  assert np.asarray(sample_present(jax.random.PRNGKey(2), batch, 0.0)).all()


def test_training_with_modality_dropout_changes_the_class_logits():
  model = _model(modality_dropout=0.9)
  variables = model.init(jax.random.PRNGKey(0), TOKENS, IMAGES)
  rngs = {"dropout": jax.random.PRNGKey(4)}
  dropped = model.apply(variables, TOKENS, IMAGES, train=True, rngs=rngs)["class_logits"]
  kept = _model().apply(variables, TOKENS, IMAGES, train=True, rngs=rngs)["class_logits"]
  assert not np.allclose(dropped, kept)
