"""Every registered text encoder against the shared contract, plus numpy references.

Compiling is what costs time on CPU, not the tiny models: parameters come from
tracing `init` (random values of its structure, `random_params`) rather than
compiling it, and every apply is jitted with at most two shapes. The first case
of each registered name (no "/" in its key) is its primary case, used by the
heavier tests (bfloat16, dropout, gradients).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign.errors import UsageError
from mmalign.models import clip_text, recurrent, text_encoders  # noqa: F401 (registration)
from mmalign.models.registry import TEXT_ENCODERS
from mmalign.registry import UnknownNameError

VOCAB, WIDTH, MAX_LENGTH = 20, 8, 10
TRANSFORMER = dict(width=WIDTH, depth=1, heads=2, max_length=MAX_LENGTH)
CASES = {  # case → (registered name, kwargs)
    "bag_of_words": ("bag_of_words", dict(width=WIDTH, mlp_layers=1, dropout=0.5)),
    "bag_of_words/max": ("bag_of_words", dict(width=WIDTH, mlp_layers=1, pooling="max")),
    "transformer": ("transformer", dict(TRANSFORMER, dropout=0.5)),
    "transformer/sinusoidal_cls_causal": (
        "transformer", dict(TRANSFORMER, positions="sinusoidal", pooling="cls", causal=True)),
    "lstm": ("lstm", dict(width=WIDTH, bidirectional=True, dropout=0.5)),
    # Its end-of-text token is each row's highest id: 9 and 8 below.
    "clip_text": ("clip_text", dict(TRANSFORMER, dropout=0.5)),
    "gru": ("gru", dict(width=WIDTH, num_layers=2, pooling="mean", dropout=0.5)),
}
PRIMARY = sorted(case for case in CASES if "/" not in case)
# [3, 5] int32: a full row, a row with two trailing pads, and an all-padding row.
TOKENS = jnp.array([[3, 7, 2, 9, 4], [5, 1, 8, 0, 0], [0, 0, 0, 0, 0]], jnp.int32)
PADDED = jnp.pad(TOKENS, ((0, 0), (0, MAX_LENGTH - TOKENS.shape[1])))  # [3, MAX_LENGTH]


def random_params(module, tokens, seed: int = 0, scale: float = 0.5):
  """Parameters with `init`'s structure and dtypes, random values (non-zero biases too)."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda leaf: jnp.asarray(rng.normal(scale=scale, size=leaf.shape), leaf.dtype), shapes)


class Tower:
  """One case: its module, float32 parameters and a jitted eval apply that counts traces."""

  def __init__(self, case: str):
    self.case = case
    self.name, self.kwargs = CASES[case]
    self.module = self.build()
    self.params = random_params(self.module, TOKENS)
    self.traces = []

    @jax.jit
    def apply(tokens):
      self.traces.append(tokens.shape)  # Runs only while tracing.
      return self.module.apply(self.params, tokens)
    self.apply = apply

  def build(self, **overrides):
    return TEXT_ENCODERS.get(self.name)(vocab_size=VOCAB, **{**self.kwargs, **overrides})


@functools.cache
def _tower(case: str) -> Tower:
  return Tower(case)


@pytest.fixture(params=sorted(CASES))
def tower(request) -> Tower:
  return _tower(request.param)


@pytest.fixture(params=PRIMARY)
def primary(request) -> Tower:
  return _tower(request.param)


def test_every_registered_text_encoder_has_a_primary_case():
  assert set(TEXT_ENCODERS.names()) == set(PRIMARY)  # A new encoder needs a case here.


def test_shapes_dtypes_and_finite(tower):
  pooled, sequence = tower.apply(TOKENS)
  assert pooled.shape == (3, WIDTH) and sequence.shape == (3, 5, WIDTH)
  assert pooled.dtype == sequence.dtype == jnp.float32
  # The all-padding row too: masked attention and pooling must not divide by zero.
  assert jnp.isfinite(pooled).all() and jnp.isfinite(sequence).all()
  assert {leaf.dtype for leaf in jax.tree.leaves(tower.params)} == {jnp.dtype(jnp.float32)}


def test_trailing_padding_changes_nothing_and_sequence_is_zero_there(tower):
  pooled, sequence = tower.apply(TOKENS)
  pooled_padded, sequence_padded = tower.apply(PADDED)
  np.testing.assert_allclose(pooled_padded, pooled, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(sequence_padded[:, :5], sequence, atol=1e-5, rtol=1e-5)
  padding = np.asarray(PADDED == 0)
  assert (np.asarray(sequence_padded)[padding] == 0).all()
  # Within a batch: row 1 ([5, 1, 8] + pads) equals the same tokens without pads in row 0.
  np.testing.assert_allclose(tower.apply(PADDED.at[0, :5].set(TOKENS[1]))[0][0], pooled[1],
                             atol=1e-5, rtol=1e-5)


def test_output_depends_on_its_own_valid_tokens_only(tower):
  pooled, _ = tower.apply(TOKENS)
  changed, _ = tower.apply(TOKENS.at[1, 1].set(6))
  assert jnp.abs(changed[1] - pooled[1]).max() > 1e-4
  np.testing.assert_allclose(changed[0], pooled[0], atol=1e-6)
  np.testing.assert_allclose(changed[2], pooled[2], atol=1e-6)


def test_only_bag_of_words_ignores_word_order(tower):
  swapped = TOKENS.at[0].set(TOKENS[0, ::-1])
  delta = jnp.abs(tower.apply(TOKENS)[0][0] - tower.apply(swapped)[0][0]).max()
  assert (delta > 1e-4) == (tower.name != "bag_of_words"), delta


def test_same_shapes_do_not_recompile(tower):
  tower.apply(TOKENS)
  before = len(tower.traces)
  again, _ = tower.apply((TOKENS * 3) % VOCAB)
  assert len(tower.traces) == before
  assert not np.allclose(again, tower.apply(TOKENS)[0])


def test_bfloat16_compute_with_float32_params(primary):
  module = primary.build(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), TOKENS)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  assert jax.tree.structure(shapes) == jax.tree.structure(primary.params)
  pooled, sequence = jax.jit(module.apply)(primary.params, TOKENS)
  assert pooled.dtype == sequence.dtype == jnp.bfloat16
  assert jnp.isfinite(pooled.astype(jnp.float32)).all()
  np.testing.assert_allclose(pooled.astype(jnp.float32), primary.apply(TOKENS)[0],
                             atol=0.1, rtol=0.1)


@functools.cache
def _train_step(case: str):
  """jit of (dropout key) → ((loss, pooled), grads) in train mode, as the trainer runs it.

  The loss reads every pooled and sequence feature with random weights, for the
  encoder and for the same encoder with frozen embeddings (gradients for both
  parameter copies). One compile serves the dropout and the gradient tests.
  """
  tower = _tower(case)
  rng = np.random.default_rng(0)
  pooled_weights = jnp.asarray(rng.normal(size=(3, WIDTH)), jnp.float32)
  sequence_weights = jnp.asarray(rng.normal(size=(3, 5, WIDTH)), jnp.float32)
  modules = (tower.module, tower.build(freeze_embeddings=True))

  def loss(params_pair, key):
    outputs = [module.apply(params, TOKENS, train=True, rngs={"dropout": key})
               for module, params in zip(modules, params_pair)]
    total = sum((pooled * pooled_weights).sum() + (sequence * sequence_weights).sum()
                for pooled, sequence in outputs)
    return total, outputs[0][0]  # Pooled [3, WIDTH] of the unfrozen encoder.
  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  return lambda key: step((tower.params, tower.params), key)


def test_dropout_acts_in_train_mode_only(primary):
  """Eval mode is `primary.apply` (no rng at all); train mode differs from it and per rng."""
  assert primary.kwargs["dropout"] > 0
  (_, first), _ = _train_step(primary.case)(jax.random.PRNGKey(1))
  (_, second), _ = _train_step(primary.case)(jax.random.PRNGKey(2))
  evaluated = primary.apply(TOKENS)[0]
  assert jnp.isfinite(first).all()
  assert jnp.abs(first - evaluated).max() > 1e-4
  assert jnp.abs(first - second).max() > 1e-4


def test_gradient_reaches_every_parameter_unless_embeddings_are_frozen(primary):
  _, grads = _train_step(primary.case)(jax.random.PRNGKey(1))
  for frozen, tree in zip((False, True), grads):
    for path, grad in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = jax.tree_util.keystr(path)
      assert jnp.isfinite(grad).all(), name
      if frozen and "'embed'" in name:
        assert (np.asarray(grad) == 0).all(), name
      else:
        assert jnp.abs(grad).max() > 0, (frozen, name)


# --- Recurrent cells against numpy, from flax's gate equations. ---


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _lstm_step(p, carry, x):
  """flax OptimizedLSTMCell / LSTMCell: input kernels `i*` (no bias), hidden `h*` (bias)."""
  c, h = carry

  def gate(name, fn):
    return fn(x @ p[f"i{name}"]["kernel"] + h @ p[f"h{name}"]["kernel"] + p[f"h{name}"]["bias"])
  i, f, g, o = gate("i", _sigmoid), gate("f", _sigmoid), gate("g", np.tanh), gate("o", _sigmoid)
  c = f * c + i * g
  return (c, o * np.tanh(c)), o * np.tanh(c)


def _gru_step(p, h, x):
  """flax GRUCell: input kernels with bias; hidden kernels without, except `hn`."""
  r = _sigmoid(x @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
  z = _sigmoid(x @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
  n = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"]
              + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
  h = (1.0 - z) * n + z * h
  return h, h


REFERENCE_CELLS = {  # name → (step, zero carry for a given width)
    "lstm": (_lstm_step, lambda width: (np.zeros(width), np.zeros(width))),
    "gru": (_gru_step, np.zeros),
}


def _run(name, cell_params, inputs):
  """Hidden states [steps, width] of one unpadded sequence inputs [steps, in]."""
  step, zero = REFERENCE_CELLS[name]
  carry, outputs = zero(cell_params["hr" if name == "gru" else "hi"]["kernel"].shape[0]), []
  for x in inputs:
    carry, h = step(cell_params, carry, x)
    outputs.append(h)
  return np.stack(outputs)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_encoder_matches_numpy_cell(name, bidirectional):
  """Width 3, vocab 5; rows of length 4 and 2 in a batch padded to 6."""
  tokens = jnp.array([[2, 4, 1, 3, 0, 0], [1, 2, 0, 0, 0, 0]], jnp.int32)
  module = TEXT_ENCODERS.get(name)(vocab_size=5, width=3, bidirectional=bidirectional)
  params = random_params(module, tokens, seed=1)
  pooled, sequence = jax.jit(module.apply)(params, tokens)
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params["params"])
  for row, length in enumerate((4, 2)):
    inputs = p["embed"]["embedding"][np.asarray(tokens[row, :length])]  # [length, 3]
    if bidirectional:
      forward = _run(name, p["layer_0_forward"], inputs)
      # The backward direction starts at the last real token, not at the padding.
      backward = _run(name, p["layer_0_backward"], inputs[::-1])[::-1]
      out = lambda h: h @ p["output"]["kernel"] + p["output"]["bias"]  # noqa: E731
      expected_sequence = out(np.concatenate([forward, backward], axis=-1))
      expected_pooled = out(np.concatenate([forward[-1], backward[0]]))
    else:
      expected_sequence = _run(name, p["layer_0"], inputs)
      expected_pooled = expected_sequence[-1]
    np.testing.assert_allclose(pooled[row], expected_pooled, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sequence[row, :length], expected_sequence, atol=1e-5, rtol=1e-5)
    assert (np.asarray(sequence[row, length:]) == 0).all()


def test_last_valid_picks_each_rows_last_real_position():
  x = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1) + 1
  got = recurrent.last_valid(x, jnp.array([3, 0]))
  np.testing.assert_array_equal(got[:, 0], [3.0, 0.0])


# --- Transformer positions, CLS and causality. ---


def test_sinusoidal_positions_match_the_closed_form():
  for length, width in ((7, 8), (5, 5)):
    expected = np.zeros((length, width))
    for pos in range(length):
      for k in range(width):
        angle = pos / 10000 ** (2 * (k // 2) / width)
        expected[pos, k] = np.sin(angle) if k % 2 == 0 else np.cos(angle)
    got = text_encoders.sinusoidal_positions(length, width)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_transformer_adds_sinusoidal_positions_and_learns_none():
  """With no blocks, sequence = final_norm(embedding + PE): the encodings are used as is."""
  module = text_encoders.TextTransformer(vocab_size=VOCAB, width=WIDTH, depth=0,
                                         positions="sinusoidal")
  params = random_params(module, TOKENS)
  assert set(params["params"]) == {"embed", "final_norm"}
  _, sequence = jax.jit(module.apply)(params, TOKENS)
  p = params["params"]
  x = (np.asarray(p["embed"]["embedding"])[np.asarray(TOKENS[0])]
       + text_encoders.sinusoidal_positions(5, WIDTH))
  expected = ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
              * p["final_norm"]["scale"] + p["final_norm"]["bias"])
  np.testing.assert_allclose(sequence[0], expected, atol=1e-5)


def test_causal_transformer_positions_see_only_earlier_tokens():
  tower = _tower("transformer/sinusoidal_cls_causal")
  pooled, sequence = tower.apply(TOKENS)
  changed_pooled, changed_sequence = tower.apply(TOKENS.at[0, 3].set(6))
  np.testing.assert_allclose(changed_sequence[0, :3], sequence[0, :3], atol=1e-6)
  assert jnp.abs(changed_sequence[0, 3:] - sequence[0, 3:]).max() > 1e-4
  assert jnp.abs(changed_pooled[0] - pooled[0]).max() > 1e-4  # The CLS reads every token.
  assert tower.params["params"]["cls"].shape == (WIDTH,)


def test_learned_positions_longer_than_max_length_fail_clearly():
  module = text_encoders.TextTransformer(vocab_size=VOCAB, width=WIDTH, depth=0, max_length=4)
  with pytest.raises(UsageError, match="max_length=4"):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), TOKENS)


@pytest.mark.parametrize("name,kwargs", [
    ("bag_of_words", dict(pooling="median")),
    ("transformer", dict(positions="rotary")),
    ("transformer", dict(pooling="max")),
    ("lstm", dict(pooling="max")),
])
def test_unknown_option_names_the_allowed_ones(name, kwargs):
  module = TEXT_ENCODERS.get(name)(vocab_size=VOCAB, width=WIDTH, **kwargs)
  with pytest.raises(UnknownNameError, match="allowed: "):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), TOKENS)


# --- Bag of words: max pooling and embeddings from a file. ---


def _masked_max_reference(x, mask):
  out = np.zeros((x.shape[0], x.shape[2]))
  for b in range(x.shape[0]):
    if mask[b].any():
      out[b] = x[b][mask[b]].max(axis=0)
  return out


def test_masked_max_matches_numpy_and_has_finite_gradients():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 6, 3)).astype(np.float32)
  mask = rng.random((4, 6)) < 0.5
  mask[0], mask[1] = True, False

  def total(v):
    pooled = text_encoders.masked_max(v, jnp.asarray(mask))
    return pooled.sum(), pooled
  (_, got), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(jnp.asarray(x))
  np.testing.assert_allclose(got, _masked_max_reference(x, mask), rtol=1e-6)
  assert jnp.isfinite(grad).all() and (np.asarray(grad)[~mask] == 0).all()


def _table_file(tmp_path, shape, dtype=np.float64) -> str:
  path = str(tmp_path / "table.npy")
  np.save(path, np.random.default_rng(4).normal(size=shape).astype(dtype))
  return path


def test_bag_of_words_max_pooling_and_table_read_from_file(tmp_path):
  path = _table_file(tmp_path, (VOCAB, WIDTH))
  module = text_encoders.BagOfWords(vocab_size=VOCAB, width=WIDTH, mlp_layers=0, pooling="max",
                                    init_embeddings=path)
  params = module.init(jax.random.PRNGKey(0), TOKENS)
  table = np.load(path)
  np.testing.assert_array_equal(params["params"]["embed"]["embedding"],
                                table.astype(np.float32))
  pooled, _ = jax.jit(module.apply)(params, TOKENS)
  np.testing.assert_allclose(pooled, _masked_max_reference(table[np.asarray(TOKENS)],
                                                           np.asarray(TOKENS != 0)), rtol=1e-6)


@pytest.mark.parametrize("shape,dtype", [((VOCAB, WIDTH + 1), np.float32),
                                         ((VOCAB, WIDTH), np.int32)])
def test_embedding_file_of_wrong_shape_or_dtype_fails_clearly(tmp_path, shape, dtype):
  path = _table_file(tmp_path, shape, dtype)
  module = text_encoders.BagOfWords(vocab_size=VOCAB, width=WIDTH, init_embeddings=path)
  with pytest.raises(UsageError) as info:
    jax.eval_shape(module.init, jax.random.PRNGKey(0), TOKENS)
  message = str(info.value)
  assert path in message and str(shape) in message and str((VOCAB, WIDTH)) in message


def test_missing_embedding_file_names_it(tmp_path):
  path = str(tmp_path / "missing.npy")
  module = text_encoders.BagOfWords(vocab_size=VOCAB, width=WIDTH, init_embeddings=path)
  with pytest.raises(UsageError, match="missing.npy"):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), TOKENS)
