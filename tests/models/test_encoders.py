"""Text/image towers, the dual encoder and the config-driven builder, on tiny shapes.

Parameters are initialised once per module and every apply is jitted with few
distinct shapes: compiling is what costs time on CPU, not the tiny models.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import quickstart
from mmalign.models import image_encoders, text_encoders
from mmalign.models.build import build_dual_encoder
from mmalign.models.dual_encoder import DualEncoder, l2_normalize
from mmalign.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS
from mmalign.registry import UnknownNameError

VOCAB, WIDTH, MAX_LENGTH = 20, 16, 12
TEXT_KWARGS = {
    "bag_of_words": dict(width=WIDTH, mlp_layers=1),
    "transformer": dict(width=WIDTH, depth=1, heads=2, max_length=MAX_LENGTH),
}
CNN_KWARGS = dict(channels=(4, 8), width=WIDTH, groups=2)
# [3, 5] int32: a full row, a row with two trailing pads, and an all-padding row.
TOKENS = jnp.array([[3, 7, 2, 9, 4], [5, 1, 8, 0, 0], [0, 0, 0, 0, 0]], jnp.int32)
PADDED = jnp.pad(TOKENS, ((0, 0), (0, MAX_LENGTH - TOKENS.shape[1])))  # [3, MAX_LENGTH]
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 1)), jnp.float32)


@pytest.fixture(scope="module", params=sorted(TEXT_KWARGS))
def text_tower(request):
  """(name, jitted apply(tokens) → (pooled, sequence)) with fixed parameters."""
  name = request.param
  encoder = TEXT_ENCODERS.get(name)(vocab_size=VOCAB, **TEXT_KWARGS[name])
  params = jax.jit(encoder.init)(jax.random.PRNGKey(0), PADDED)
  return name, jax.jit(lambda tokens: encoder.apply(params, tokens))


@pytest.fixture(scope="module")
def cnn():
  encoder = image_encoders.SmallCNN(**CNN_KWARGS)
  params = jax.jit(encoder.init)(jax.random.PRNGKey(0), IMAGES)
  return jax.jit(lambda images: encoder.apply(params, images))


def test_text_kwargs_here_name_registered_encoders():
  # Every registered encoder is covered by tests/models/test_text_encoders.py.
  assert set(TEXT_KWARGS) <= set(TEXT_ENCODERS.names())


def test_text_encoder_shapes_and_finite(text_tower):
  _, apply = text_tower
  pooled, sequence = apply(TOKENS)
  assert pooled.shape == (3, WIDTH)
  assert sequence.shape == (3, 5, WIDTH)
  # The all-padding row too: masked attention and pooling must not divide by zero.
  assert jnp.isfinite(pooled).all() and jnp.isfinite(sequence).all()


def test_text_encoder_ignores_trailing_padding(text_tower):
  _, apply = text_tower
  pooled, sequence = apply(TOKENS)
  pooled_padded, sequence_padded = apply(PADDED)
  np.testing.assert_allclose(pooled_padded, pooled, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(sequence_padded[:2, :2], sequence[:2, :2], atol=1e-5, rtol=1e-5)
  # Within a batch: row 1 ([5, 1, 8] + pads) equals the same tokens without any pads.
  unpadded = TOKENS.at[0, :3].set(TOKENS[1, :3])[:, :3]
  np.testing.assert_allclose(apply(unpadded)[0][0], pooled[1], atol=1e-5, rtol=1e-5)


def test_text_encoder_depends_on_valid_tokens_only(text_tower):
  """Guards the invariance test: a changed valid token must change its row only."""
  _, apply = text_tower
  pooled, _ = apply(TOKENS)
  pooled_changed, _ = apply(TOKENS.at[1, 1].set(6))
  assert jnp.abs(pooled_changed[1] - pooled[1]).max() > 1e-4
  np.testing.assert_allclose(pooled_changed[0], pooled[0], atol=1e-6)


def test_only_the_transformer_sees_word_order(text_tower):
  name, apply = text_tower
  swapped = TOKENS.at[0].set(TOKENS[0, ::-1])
  delta = jnp.abs(apply(TOKENS)[0][0] - apply(swapped)[0][0]).max()
  assert (delta > 1e-4) == (name == "transformer"), delta


def _masked_mean_reference(x, mask):
  x, mask = np.asarray(x, np.float64), np.asarray(mask, bool)
  out = np.zeros((x.shape[0], x.shape[2]))
  for b in range(x.shape[0]):
    if mask[b].any():
      out[b] = x[b][mask[b]].mean(axis=0)
  return out


def test_masked_mean_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 6, 3)).astype(np.float32)
  mask = rng.random((4, 6)) < 0.5
  mask[0] = True
  mask[1] = False
  got = text_encoders.masked_mean(jnp.asarray(x), jnp.asarray(mask))
  np.testing.assert_allclose(got, _masked_mean_reference(x, mask), rtol=1e-5, atol=1e-6)
  assert (np.asarray(got[1]) == 0).all()


def test_masked_mean_gradient_matches_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 5, 2)).astype(np.float32)
  weights = rng.normal(size=(3, 2)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  grad = jax.grad(lambda v: (text_encoders.masked_mean(v, jnp.asarray(mask)) * weights).sum())(
      jnp.asarray(x))
  count = np.maximum(mask.sum(axis=1), 1)[:, None, None]
  expected = np.broadcast_to(mask[..., None] * weights[:, None, :] / count, x.shape)
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)


def test_cnn_shapes_and_finite(cnn):
  assert "cnn" in IMAGE_ENCODERS.names()
  pooled, sequence = cnn(IMAGES)
  assert pooled.shape == (3, WIDTH)
  assert sequence.shape == (3, 4 * 4, WIDTH)  # Two stages halve 16 → 4; projected to width.
  assert jnp.isfinite(pooled).all()


def test_cnn_output_does_not_depend_on_batch_mates(cnn):
  pooled, _ = cnn(IMAGES)
  changed, _ = cnn(IMAGES.at[1].multiply(-3.0))
  assert jnp.abs(changed[1] - pooled[1]).max() > 1e-4
  np.testing.assert_allclose(changed[0], pooled[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(changed[2], pooled[2], atol=1e-5, rtol=1e-5)


def test_l2_normalize_matches_numpy():
  x = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
  x[2] = 0.0
  got = l2_normalize(jnp.asarray(x))
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  expected = np.where(norms > 0, x / np.maximum(norms, 1e-6), 0.0)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def _dual(text_encoder="bag_of_words", init_scale=7.0) -> DualEncoder:
  return DualEncoder(text_encoder=text_encoder,
                     text_kwargs=dict(vocab_size=VOCAB, **TEXT_KWARGS[text_encoder]),
                     image_encoder="cnn", image_kwargs=CNN_KWARGS, embed_dim=8,
                     init_scale=init_scale)


def test_dual_encoder_embeddings_have_unit_norm_and_initial_scale():
  model = _dual()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), TOKENS, IMAGES)
  traces = []

  @jax.jit
  def apply(params, tokens, images):
    traces.append(tokens.shape)  # Runs only while tracing.
    return model.apply(params, tokens, images)

  outputs = apply(params, TOKENS[:2], IMAGES[:2])
  text_emb, image_emb, scale = outputs["text_emb"], outputs["image_emb"], outputs["scale"]
  assert set(outputs) == {"text_emb", "image_emb", "scale", "bias"}  # No fusion configured.
  assert text_emb.shape == image_emb.shape == (2, 8)
  assert text_emb.dtype == image_emb.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(text_emb, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(image_emb, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(float(scale), 7.0, rtol=1e-6)
  # Calling again with new values of the same shapes reuses the compiled function.
  again = apply(params, TOKENS[:2] + 1, IMAGES[:2] * 2.0)
  assert len(traces) == 1
  assert not np.allclose(again["text_emb"], text_emb)
  apply(params, TOKENS, IMAGES)  # A new shape does retrace: the counter can fail.
  assert len(traces) == 2


def test_dual_encoder_scale_is_clipped_at_max_scale():
  for init_scale, expected in ((7.0, 7.0), (500.0, 100.0)):
    model = _dual(init_scale=init_scale)
    params = model.init(jax.random.PRNGKey(0), method=DualEncoder.scale)
    assert float(model.apply(params, method=DualEncoder.scale)) == pytest.approx(expected)


def _model_config(**overrides) -> ml_collections.ConfigDict:
  config = quickstart.get_config().model
  config.text_kwargs.bag_of_words = ml_collections.ConfigDict({"width": WIDTH, "mlp_layers": 1})
  config.text_kwargs.transformer = ml_collections.ConfigDict(
      {"width": WIDTH, "depth": 1, "heads": 2})
  config.image_kwargs.cnn = ml_collections.ConfigDict(CNN_KWARGS)
  config.embed_dim = 8
  config.init_scale = 5.0
  config.update(overrides)
  return config


def test_build_dual_encoder_from_config():
  model = build_dual_encoder(_model_config(), vocab_size=VOCAB, max_length=MAX_LENGTH)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), TOKENS, IMAGES)
  # The tokenizer's vocabulary size reached the text tower.
  assert params["params"]["text_tower"]["embed"]["embedding"].shape == (VOCAB, WIDTH)
  outputs = jax.eval_shape(model.apply, params, TOKENS, IMAGES)
  assert outputs["text_emb"].shape == outputs["image_emb"].shape == (3, 8)
  scale_params = model.init(jax.random.PRNGKey(0), method=DualEncoder.scale)
  assert float(model.apply(scale_params, method=DualEncoder.scale)) == pytest.approx(5.0)


def test_build_transformer_gets_the_tokenizer_max_length():
  config = _model_config(text_encoder="transformer")
  model = build_dual_encoder(config, vocab_size=VOCAB, max_length=MAX_LENGTH)
  assert model.text_kwargs["max_length"] == MAX_LENGTH
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), TOKENS, IMAGES)
  assert params["params"]["text_tower"]["positions"].shape == (MAX_LENGTH, WIDTH)


@pytest.mark.parametrize("key", ["text_encoder", "image_encoder"])
def test_build_with_unknown_encoder_names_the_config_key(key):
  config = _model_config(**{key: "no_such_encoder"})
  with pytest.raises(UnknownNameError) as info:
    build_dual_encoder(config, vocab_size=VOCAB, max_length=MAX_LENGTH)
  message = str(info.value)
  assert f"'model.{key}'" in message and "'no_such_encoder'" in message
  registry = TEXT_ENCODERS if key == "text_encoder" else IMAGE_ENCODERS
  assert ", ".join(registry.names()) in message
