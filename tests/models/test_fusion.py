"""Fusion modules on tiny shapes: interface, masks, missing modalities, gradients, values.

Each configuration gets numpy-drawn parameters once and one jitted function
(output and gradient) that most tests share: compiling is what costs time on
CPU, so the batch below packs every presence pattern and padding case into
one shape.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign.errors import UsageError
from mmalign.models import fusion
from mmalign.models.fusion import FUSIONS, FusionInputs, build_fusion
from mmalign.registry import UnknownNameError

B, LT, LI, DT, DI = 6, 5, 3, 6, 4
# Per row: (has text, has image), valid text tokens, valid image patches.
PRESENT = np.array([[1, 1], [1, 1], [1, 0], [0, 1], [0, 0], [1, 1]], bool)
TEXT_LENGTHS = np.array([5, 3, 2, 4, 1, 0])  # Row 5: text present but without a valid token.
IMAGE_LENGTHS = np.array([3, 2, 3, 1, 0, 3])


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  kwargs: dict
  out_dim: int
  # Parameters used only when a modality is missing: no gradient with both present.
  fallback_only: tuple[str, ...] = ()


# "both" runs the text→image stream too, and a numpy test below checks it value by value.
CASES = {
    "concat": Case("concat", dict(width=5, indicator=True), 12, ("text_missing", "image_missing")),
    "weighted_sum_fixed": Case("weighted_sum", dict(alpha_mode="fixed", alpha=0.3), DT),
    "weighted_sum_gate": Case("weighted_sum", dict(alpha_mode="gate", width=5), 5),
    "cross_image_to_text": Case("cross_attention", dict(direction="image_to_text", width=DI,
                                                        heads=2), DI, ("text_proj",)),
    "cross_both": Case("cross_attention", dict(direction="both", width=8), 16),
    "joint_mean": Case("joint_transformer", dict(width=8, depth=1, heads=2), 8),
    "joint_cls": Case("joint_transformer", dict(width=8, depth=1, heads=2, pool="cls"), 8),
    "correspondence": Case("correspondence", dict(out_dim=5), 5),
}


def _inputs(seed=0, present=PRESENT, lt=LT, li=LI, dt=DT, di=DI, text_lengths=TEXT_LENGTHS,
            image_lengths=IMAGE_LENGTHS) -> FusionInputs:
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return FusionInputs.create(
      (normal(len(present), dt), normal(len(present), lt, dt)),
      (normal(len(present), di), normal(len(present), li, di)),
      text_mask=np.arange(lt)[None] < np.asarray(text_lengths)[:, None],
      image_mask=np.arange(li)[None] < np.asarray(image_lengths)[:, None],
      present=present)


INPUTS = _inputs()


VALUE_FIELDS = ("text_pooled", "text_seq", "image_pooled", "image_seq")


def _fill_ignored(inputs: FusionInputs, garbage) -> FusionInputs:
  """`inputs` with `garbage` (a scalar, or FusionInputs of the same shapes) at every padding
  position and in every missing modality; valid values are kept."""
  has_t, has_i = inputs.has_text[:, None], inputs.has_image[:, None]
  keep = dict(text_pooled=has_t, text_seq=(inputs.text_mask & has_t)[..., None],
              image_pooled=has_i, image_seq=(inputs.image_mask & has_i)[..., None])
  def other(field):
    x = getattr(inputs, field)
    value = getattr(garbage, field) if isinstance(garbage, FusionInputs) else garbage
    return jnp.broadcast_to(jnp.asarray(value, x.dtype), x.shape)
  return inputs.replace(**{f: jnp.where(keep[f], getattr(inputs, f), other(f))
                           for f in VALUE_FIELDS})


def _random_params(module, inputs: FusionInputs, seed: int = 0):
  """Parameters of `module` drawn from numpy instead of its initialisers.

  Compiling the initialisers' random number generation costs more than all
  the tests of a module; random (non-zero) biases also make the numpy
  comparisons check the biases, which zero initial biases would not.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), inputs)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.5, s.dtype), shapes)


class Compiled:
  """One configuration: module, parameters, and one jitted function giving the output and
  the gradient of a random projection of it (one compilation serves most tests)."""

  def __init__(self, case: Case):
    self.case = case
    self.module = build_fusion(case.name, **case.kwargs)
    self.params = _random_params(self.module, INPUTS)
    weights = jnp.asarray(np.random.default_rng(9).normal(size=(B, case.out_dim)), jnp.float32)

    @jax.jit
    def forward_and_grad(params, inputs):
      out, vjp = jax.vjp(lambda p: self.module.apply(p, inputs), params)
      return out, vjp(weights)[0]
    self._forward_and_grad = forward_and_grad

  def apply(self, params, inputs):
    return self._forward_and_grad(params, inputs)[0]

  def grad(self, params, inputs):
    return self._forward_and_grad(params, inputs)[1]


_COMPILED: dict[str, Compiled] = {}


def _compiled(key: str) -> Compiled:
  if key not in _COMPILED:
    _COMPILED[key] = Compiled(CASES[key])
  return _COMPILED[key]


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request) -> Compiled:
  return _compiled(request.param)


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_every_registered_fusion_has_a_case():
  assert {case.name for case in CASES.values()} == set(FUSIONS.names())
  assert set(FUSIONS.names()) == {"concat", "weighted_sum", "cross_attention",
                                  "joint_transformer", "correspondence"}


def test_shape_dtype_and_finite(compiled):
  out = compiled.apply(compiled.params, INPUTS)
  assert out.shape == (B, compiled.case.out_dim)
  assert out.dtype == jnp.float32
  assert jnp.isfinite(out).all()


@pytest.mark.parametrize("value", [np.nan, 1e4, "random"])
def test_padding_and_missing_modalities_are_never_read(compiled, value):
  """Garbage, even NaN, in padded positions or a missing modality changes nothing."""
  if value == "random":
    garbage = _inputs(seed=5)
    value = garbage.replace(**{f: getattr(garbage, f) * 100 for f in VALUE_FIELDS})
  perturbed = _fill_ignored(INPUTS, value)
  clean = compiled.apply(compiled.params, INPUTS)
  np.testing.assert_array_equal(compiled.apply(compiled.params, perturbed), clean)


def test_valid_inputs_change_their_own_row_only(compiled):
  """Guards the invariance tests: a changed valid input must reach its row, and only it."""
  changed = INPUTS.replace(image_pooled=INPUTS.image_pooled.at[0].multiply(-2.0),
                           image_seq=INPUTS.image_seq.at[0].multiply(-2.0))
  before = compiled.apply(compiled.params, INPUTS)
  after = compiled.apply(compiled.params, changed)
  assert np.abs(after[0] - before[0]).max() > 1e-4
  np.testing.assert_array_equal(after[1:], before[1:])


@pytest.mark.parametrize("missing", ["image", "text"])
@pytest.mark.parametrize("key", sorted(k for k, c in CASES.items()
                                       if c.name in ("cross_attention", "joint_transformer")))
def test_missing_modality_equals_the_single_modality_result(key, missing):
  """A row without the image equals the same row in a batch that has no image
  inputs at all (image length 1, absent everywhere), and likewise for text.

  Only modules that read sequences can depend on their length; the pooled-only
  ones get their single-modality values checked against numpy below.
  """
  compiled = _compiled(key)
  column = 1 if missing == "image" else 0
  rows = np.flatnonzero(~PRESENT[:, column])
  single = _inputs(lt=1 if missing == "text" else LT, li=1 if missing == "image" else LI,
                   present=PRESENT & (np.arange(2) != column),
                   text_lengths=TEXT_LENGTHS if missing == "image" else np.zeros(B, int),
                   image_lengths=IMAGE_LENGTHS if missing == "text" else np.zeros(B, int))
  keep = ("text_pooled", "text_seq", "text_mask") if missing == "image" else (
      "image_pooled", "image_seq", "image_mask")
  single = single.replace(**{f: getattr(INPUTS, f) for f in keep})
  full = compiled.apply(compiled.params, INPUTS)
  alone = jax.jit(compiled.module.apply)(compiled.params, single)  # Forward only: cheaper.
  np.testing.assert_allclose(full[rows], alone[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pattern", [(1, 0), (0, 1), (0, 0), "mixed"])
def test_every_presence_pattern_is_finite(compiled, pattern):
  present = PRESENT if pattern == "mixed" else np.broadcast_to(np.array(pattern, bool), (B, 2))
  out = compiled.apply(compiled.params, INPUTS.replace(present=jnp.asarray(present)))
  assert jnp.isfinite(out).all()
  if pattern == (0, 0):  # A default that cannot depend on the (absent) inputs.
    np.testing.assert_array_equal(out, jnp.broadcast_to(out[0], out.shape))


def test_gradient_reaches_every_parameter(compiled):
  full = _leaves(compiled.grad(compiled.params, INPUTS.replace(present=jnp.ones((B, 2), bool))))
  mixed = _leaves(compiled.grad(compiled.params, INPUTS))
  fallback = [k for k in full if any(f"'{name}'" in k for name in compiled.case.fallback_only)]
  assert len(fallback) >= len(compiled.case.fallback_only)
  for key, grad in full.items():
    assert np.isfinite(grad).all() and np.isfinite(mixed[key]).all(), key
    assert (np.abs(grad).max() == 0) == (key in fallback), key
    assert np.abs(mixed[key]).max() > 0, key  # Missing rows train the fallback parameters.


def test_bfloat16_compute_with_float32_params(compiled):
  module = build_fusion(compiled.case.name, dtype=jnp.bfloat16, **compiled.case.kwargs)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), INPUTS)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  out = jax.jit(module.apply)(compiled.params, INPUTS)  # Same float32 parameters.
  assert out.dtype == jnp.bfloat16 and out.shape == (B, compiled.case.out_dim)
  assert jnp.isfinite(out).all()
  reference = compiled.apply(compiled.params, INPUTS)
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=0.1, rtol=0.05)


# --- Values against numpy recomputations from the parameters. --------------------------------

def _np(inputs: FusionInputs) -> dict[str, np.ndarray]:
  """Inputs as float64 numpy, with missing modalities zeroed (what the formulas assume)."""
  has_t, has_i = np.asarray(inputs.has_text)[:, None], np.asarray(inputs.has_image)[:, None]
  return dict(t=np.where(has_t, np.asarray(inputs.text_pooled, np.float64), 0.0),
              i=np.where(has_i, np.asarray(inputs.image_pooled, np.float64), 0.0),
              has_t=has_t, has_i=has_i)


def _dense(params, x):
  return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


def test_weighted_sum_fixed_is_exactly_the_survey_formula():
  inputs = _inputs(di=DT)  # Equal widths: no projection, no parameters.
  module = build_fusion("weighted_sum", alpha_mode="fixed", alpha=0.3)
  params = module.init(jax.random.PRNGKey(0), inputs)
  assert not jax.tree.leaves(params)
  got = np.asarray(jax.jit(module.apply)(params, inputs))
  x = _np(inputs)
  expected = np.where(x["has_t"] & x["has_i"], 0.3 * x["t"] + 0.7 * x["i"], x["t"] + x["i"])
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(got[4], 0.0)  # Neither modality.


@pytest.mark.parametrize("mode", ["scalar", "gate"])
def test_weighted_sum_learned_alpha_matches_numpy(mode):
  module = build_fusion("weighted_sum", alpha_mode=mode, alpha=0.25)
  if mode == "scalar":  # The real initialiser puts α at the configured value.
    logit = module.init(jax.random.PRNGKey(1), INPUTS)["params"]["alpha_logit"]
    assert 1 / (1 + np.exp(-float(logit))) == pytest.approx(0.25, rel=1e-6)
  params = _random_params(module, INPUTS, seed=1)["params"]
  got = np.asarray(jax.jit(module.apply)({"params": params}, INPUTS))
  x = _np(INPUTS)
  t, i = x["t"], np.where(x["has_i"], _dense(params["image_proj"], x["i"]), 0.0)
  if mode == "scalar":
    alpha = 1 / (1 + np.exp(-float(params["alpha_logit"])))
  else:
    alpha = 1 / (1 + np.exp(-_dense(params["gate"], np.concatenate(
        [t, _dense(params["image_proj"], x["i"])], axis=-1))))
  alpha = np.where(x["has_t"] & x["has_i"], alpha, x["has_t"].astype(float))
  np.testing.assert_allclose(got, alpha * t + (1 - alpha) * i, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("missing", ["learned", "zeros"])
def test_concat_matches_numpy(missing):
  module = build_fusion("concat", width=5, missing=missing, indicator=True)
  variables = _random_params(module, INPUTS, seed=2)
  params = variables.get("params", {})
  got = np.asarray(jax.jit(module.apply)(variables, INPUTS))
  x = _np(INPUTS)
  parts = []
  for name, has in (("text", x["has_t"]), ("image", x["has_i"])):
    fill = np.asarray(params[f"{name}_missing"]) if missing == "learned" else np.zeros(5)
    parts.append(np.where(has, _dense(params[f"{name}_proj"], x[name[0]]), fill))
  expected = np.concatenate(parts + [PRESENT.astype(float)], axis=-1)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rescale", [True, False])
def test_correspondence_is_a_times_m(rescale):
  module = build_fusion("correspondence", out_dim=5, rescale=rescale)
  params = _random_params(module, INPUTS, seed=3)["params"]
  a = np.asarray(params["correspondence"], np.float64)
  assert a.shape == (5, DT + DI)  # x = A·m with m = [t; i], as in the survey.
  x = _np(INPUTS)
  m = np.concatenate([x["t"], x["i"]], axis=-1)
  if rescale:
    m *= 2 / np.maximum(PRESENT.sum(axis=-1, keepdims=True), 1)
  expected = m @ a.T + np.asarray(params["bias"])
  np.testing.assert_allclose(jax.jit(module.apply)({"params": params}, INPUTS), expected,
                             rtol=1e-5, atol=1e-6)


def _reference_cross_attention(params, inputs: FusionInputs) -> np.ndarray:
  """Single-head text→image attention in float64, written out by hand."""
  f64 = lambda v: np.asarray(v, np.float64)
  x = _np(inputs)
  attn = params["text_to_image"]
  proj = lambda name, seq: np.einsum("bld,dhk->blk", seq, f64(attn[name]["kernel"])) + f64(
      attn[name]["bias"]).reshape(-1)
  t_seq, i_seq = f64(inputs.text_seq), f64(inputs.image_seq)
  q, k, v = proj("query", t_seq), proj("key", i_seq), proj("value", i_seq)  # [b, l, w]
  text_mask = np.asarray(inputs.text_mask) & x["has_t"]
  image_mask = np.asarray(inputs.image_mask) & x["has_i"]
  out = np.zeros((len(q), q.shape[-1]))
  for b in range(len(q)):
    own_text = x["t"][b]
    own_image = _dense(params["image_proj"], x["i"][b])
    if not x["has_t"][b, 0]:
      out[b] = own_image if x["has_i"][b, 0] else 0.0
      continue
    if not image_mask[b].any():
      out[b] = own_text
      continue
    logits = q[b] @ k[b][image_mask[b]].T / np.sqrt(q.shape[-1])  # [lt, valid patches]
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    tokens = np.einsum("lw,wo->lo", weights @ v[b][image_mask[b]],
                       f64(attn["out"]["kernel"]).reshape(q.shape[-1], -1)) + f64(
                           attn["out"]["bias"])
    pooled = tokens[text_mask[b]].mean(axis=0) if text_mask[b].any() else 0.0
    out[b] = own_text + pooled
  return out


@pytest.mark.parametrize("image_lengths", [IMAGE_LENGTHS, [3, 0, 3, 1, 0, 3]])
def test_cross_attention_matches_hand_written_softmax_attention(image_lengths):
  """The second batch has an image without one valid patch in a row with both modalities."""
  inputs = _inputs(image_lengths=image_lengths)
  module = build_fusion("cross_attention", direction="text_to_image", heads=1)
  params = _random_params(module, inputs, seed=4)["params"]
  got = jax.jit(module.apply)({"params": params}, inputs)
  np.testing.assert_allclose(got, _reference_cross_attention(params, inputs),
                             rtol=1e-5, atol=1e-5)


# --- Interface and configuration errors. ----------------------------------------------------

def test_unknown_fusion_name_lists_the_registered_ones():
  with pytest.raises(UnknownNameError) as info:
    build_fusion("film", config_key="model.fusion")
  message = str(info.value)
  assert "'film'" in message and "'model.fusion'" in message
  assert ", ".join(FUSIONS.names()) in message


@pytest.mark.parametrize("name, kwargs", [
    ("concat", dict(missing="mean")), ("weighted_sum", dict(alpha_mode="attention")),
    ("weighted_sum", dict(alpha=1.5)), ("weighted_sum", dict(alpha_mode="scalar", alpha=1.0)),
    ("cross_attention", dict(direction="sideways")), ("joint_transformer", dict(pool="max"))])
def test_bad_options_fail_when_the_module_is_built(name, kwargs):
  with pytest.raises(UsageError):
    build_fusion(name, **kwargs)


def test_inputs_with_disagreeing_shapes_name_the_culprit():
  bad = INPUTS.replace(image_mask=INPUTS.image_mask[:, :2])
  with pytest.raises(UsageError, match="image_mask"):
    fusion.Concat().init(jax.random.PRNGKey(0), bad)


def test_create_defaults_to_everything_valid():
  inputs = FusionInputs.create((INPUTS.text_pooled, INPUTS.text_seq),
                               (INPUTS.image_pooled, INPUTS.image_seq))
  assert inputs.text_mask.all() and inputs.image_mask.all() and inputs.present.all()
  assert inputs.present.shape == (B, 2) and inputs.present.dtype == jnp.bool_
