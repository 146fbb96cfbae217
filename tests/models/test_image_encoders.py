"""Image encoders (cnn, vgg, resnet, vit) against the image encoder contract, on tiny shapes.

Compiling is what costs time on CPU, so every tower's apply and gradient are
jitted once per session (without LLVM optimisations) and reused, and
variables come from `jax.eval_shape` filled with numpy noise instead of a
compiled `init` (random running statistics also make the BatchNorm tests
stricter than the init values 0 and 1 would). Parameter counts use
`jax.eval_shape` only.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign.models import image_encoders  # noqa: F401 (registers every image encoder)
from mmalign.models.dual_encoder import DualEncoder
from mmalign.models.registry import IMAGE_ENCODERS
from mmalign.models.resnet import BasicBlock, ResNet
from mmalign.models.vgg import VGG, VGG_LAYOUTS, stage_layout
from mmalign.models.vit import ViT
from mmalign.registry import UnknownNameError

BATCH = 4
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, 32, 32, 3)), jnp.float32)
# name → (tiny kwargs, pooled shape, sequence shape) on IMAGES [4, 32, 32, 3].
TINY = {
    "cnn": (dict(channels=(4, 8), width=16, groups=2), (BATCH, 16), (BATCH, 64, 16)),
    "vgg": (dict(layout=(8, "M", 16, 16, "M")), (BATCH, 16), (BATCH, 64, 16)),
    # 32×32 kept by the small stem, then halved by stages 2-4: 4×4 maps of 8·width channels.
    "resnet": (dict(depth=18, width=4, small_input=True), (BATCH, 32), (BATCH, 16, 32)),
    "vit": (dict(width=16, depth=2, heads=2, patch_size=8), (BATCH, 16), (BATCH, 16, 16)),
}
WITH_BATCH_NORM = ("vgg", "resnet")  # Their tiny configs use the default norm="batch".
# Tiny inputs run in microseconds; compiling is the cost, and LLVM's optimisations
# roughly double it for no benefit here.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def random_variables(model, images, seed=0):
  """Variables with `init`'s structure, filled with numpy noise (no compilation).

  Kernels ~ N(0, 1/fan_in), norm scales ~ 1, running variances in [0.5, 1.5].
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    collection, name = path[0].key, path[-1].key
    if collection == "batch_stats":
      value = (rng.normal(0.0, 0.2, leaf.shape) if name == "mean"
               else rng.uniform(0.5, 1.5, leaf.shape))
    elif name == "kernel":
      value = rng.normal(0.0, 1.0 / math.sqrt(math.prod(leaf.shape[:-1])), leaf.shape)
    elif name == "scale":
      value = 1.0 + rng.normal(0.0, 0.1, leaf.shape)
    else:  # Biases, CLS token, position embeddings.
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def split(variables):
  """(params, the other collections): only `params` are trained."""
  state = {k: v for k, v in variables.items() if k != "params"}
  return variables["params"], state


class Tower:
  """One tiny encoder with fixed variables and jitted eval / train functions."""

  def __init__(self, name):
    kwargs, self.pooled_shape, self.sequence_shape = TINY[name]
    self.name = name
    self.model = IMAGE_ENCODERS.get(name)(**kwargs)
    self.variables = random_variables(self.model, IMAGES)
    self.traces = []  # Input shapes, appended only while tracing.
    rng = np.random.default_rng(1)
    # A loss with random weights: a plain sum would have zero gradient w.r.t. the
    # final LayerNorm scale (normalised features sum to zero).
    weights = (jnp.asarray(rng.normal(size=self.pooled_shape[1:]), jnp.float32),
               jnp.asarray(rng.normal(size=self.sequence_shape[1:]), jnp.float32))

    @fast_jit
    def evaluate(variables, images):
      self.traces.append(images.shape)
      return self.model.apply(variables, images)

    @fast_jit
    def train(params, state, images, key):
      """→ (grads, new state, pooled [b, d]) of one train-mode step."""
      def loss_of(params):
        (pooled, sequence), new_state = self.model.apply(
            {"params": params, **state}, images, train=True, mutable=list(state),
            rngs={"dropout": key})
        loss = (pooled * weights[0]).sum() + (sequence * weights[1]).sum()
        return loss.astype(jnp.float32), (new_state, pooled)
      grads, (new_state, pooled) = jax.grad(loss_of, has_aux=True)(params)
      return grads, new_state, pooled

    self.evaluate = lambda images: evaluate(self.variables, images)
    self.train = lambda images: train(*split(self.variables), images, jax.random.PRNGKey(0))


@functools.cache
def cached_tower(name) -> Tower:
  """Built once per session: each tower compiles its functions once."""
  return Tower(name)


@pytest.fixture(params=sorted(TINY))
def tower(request) -> Tower:
  return cached_tower(request.param)


def test_every_image_encoder_has_tiny_kwargs_here():
  assert set(IMAGE_ENCODERS.names()) == set(TINY)  # A new encoder needs a test entry.
  assert {"cnn", "vgg", "resnet", "vit"} <= set(IMAGE_ENCODERS.names())


def test_shapes_dtypes_and_finite(tower):
  pooled, sequence = tower.evaluate(IMAGES)
  assert pooled.shape == tower.pooled_shape
  assert sequence.shape == tower.sequence_shape
  assert pooled.dtype == sequence.dtype == jnp.float32
  assert jnp.isfinite(pooled).all() and jnp.isfinite(sequence).all()


def test_same_shapes_do_not_retrace(tower):
  first = tower.evaluate(IMAGES)
  second = tower.evaluate(IMAGES * 2.0 + 1.0)
  assert tower.traces.count(IMAGES.shape) == 1
  assert not np.allclose(first[0], second[0])


def test_eval_output_does_not_depend_on_batch_mates(tower):
  """Eval mode uses BatchNorm's running averages: one image alone = the same image in a batch."""
  pooled, sequence = tower.evaluate(IMAGES)
  if tower.name in WITH_BATCH_NORM:  # (A batch of 1 costs a compile; the others need none.)
    alone_pooled, alone_sequence = tower.evaluate(IMAGES[:1])
    np.testing.assert_allclose(alone_pooled[0], pooled[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone_sequence[0], sequence[0], rtol=1e-4, atol=1e-5)
  changed, _ = tower.evaluate(IMAGES.at[1].multiply(-3.0))
  assert jnp.abs(changed[1] - pooled[1]).max() > 1e-4  # Guard: the change is visible.
  np.testing.assert_allclose(changed[0], pooled[0], rtol=1e-4, atol=1e-5)


def test_gradient_reaches_every_parameter(tower):
  grads, _, _ = tower.train(IMAGES)
  flat = jax.tree_util.tree_leaves_with_path(grads)
  assert flat
  for path, grad in flat:
    assert jnp.isfinite(grad).all(), jax.tree_util.keystr(path)
    assert jnp.any(grad != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_train_mode_batch_norm_updates_running_statistics(tower):
  _, state = split(tower.variables)
  _, new_state, pooled = tower.train(IMAGES)
  if tower.name not in WITH_BATCH_NORM:
    assert not state and not new_state
    return
  assert set(state) == set(new_state) == {"batch_stats"}
  for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(state),
                              jax.tree_util.tree_leaves(new_state)):
    assert old.shape == new.shape and new.dtype == jnp.float32
    assert jnp.abs(new - old).max() > 1e-6, f"{jax.tree_util.keystr(path)} was not updated"
  # Train mode normalises with batch statistics: an example's output depends on its batch.
  _, _, changed = tower.train(IMAGES.at[1].multiply(-3.0))
  assert jnp.abs(changed[0] - pooled[0]).max() > 1e-4


def test_resnet_running_statistics_follow_momentum_0_9():
  """The stem's running mean/var = 0.9·old + 0.1·(biased) batch statistics of its conv output."""
  tower = cached_tower("resnet")
  params, state = split(tower.variables)
  _, new_state, _ = tower.train(IMAGES)
  conv = jax.lax.conv_general_dilated(  # The small-input stem: 3×3, stride 1, padding 1.
      IMAGES, params["stem"]["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
  conv = np.asarray(conv, np.float64)
  old, new = state["batch_stats"]["stem"]["norm"], new_state["batch_stats"]["stem"]["norm"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * conv.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * conv.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg", "resnet"])
@pytest.mark.parametrize("norm", ["group", "none"])
def test_group_norm_and_no_norm_have_no_batch_stats(name, norm):
  kwargs = TINY[name][0]
  variables = jax.eval_shape(IMAGE_ENCODERS.get(name)(**kwargs, norm=norm).init,
                             jax.random.PRNGKey(0), IMAGES)
  assert set(variables) == {"params"}
  conv = variables["params"]["conv1" if name == "vgg" else "stem"]
  conv = conv if name == "vgg" else conv["conv"]
  assert ("bias" in conv) == (norm == "none")  # A conv followed by a norm needs no bias.


def test_group_norm_is_independent_of_batch_mates_in_train_mode():
  model = VGG(**TINY["vgg"][0], norm="group", groups=2)
  variables = random_variables(model, IMAGES)
  apply = fast_jit(lambda images: model.apply(variables, images, train=True)[0])
  pooled, changed = apply(IMAGES), apply(IMAGES.at[1].multiply(-3.0))
  assert jnp.abs(changed[1] - pooled[1]).max() > 1e-4
  np.testing.assert_allclose(changed[0], pooled[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_compute_keeps_float32_parameters(name):
  kwargs, pooled_shape, sequence_shape = TINY[name]
  model = IMAGE_ENCODERS.get(name)(**kwargs, dtype=jnp.bfloat16)
  for leaf in jax.tree.leaves(jax.eval_shape(model.init, jax.random.PRNGKey(0), IMAGES)):
    assert leaf.dtype == jnp.float32
  reference = cached_tower(name)  # Same variables, float32 compute.
  pooled, sequence = fast_jit(model.apply)(reference.variables, IMAGES)
  pooled_32, _ = reference.evaluate(IMAGES)
  assert pooled.shape == pooled_shape and sequence.shape == sequence_shape
  assert pooled.dtype == sequence.dtype == jnp.bfloat16
  assert jnp.isfinite(pooled.astype(jnp.float32)).all()
  error = jnp.abs(pooled.astype(jnp.float32) - pooled_32).max()
  assert error < 0.1 * jnp.abs(pooled_32).max(), error


def _layer_norm(x, scale, bias, epsilon=1e-6):
  x = np.asarray(x, np.float64)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + epsilon) * np.asarray(scale) + np.asarray(bias)


def test_vit_cls_and_mean_pooling_match_a_numpy_recomputation():
  """The encoder's outputs from the last block's (pre-norm) tokens, recomputed in numpy.

  cls: pooled = LN(token 0), sequence = LN(patch tokens); mean: pooled = the mean of
  sequence = LN(patch tokens). Both models share every parameter but the CLS token.
  """
  kwargs = TINY["vit"][0]
  cls_model, mean_model = ViT(**kwargs, pooling="cls"), ViT(**kwargs, pooling="mean")
  cls_variables = random_variables(cls_model, IMAGES)
  params = dict(cls_variables["params"])
  del params["cls_token"]
  params["pos_embed"] = params["pos_embed"][:, 1:]
  mean_variables = {"params": params}
  assert jax.tree.structure(mean_variables) == jax.tree.structure(
      jax.eval_shape(mean_model.init, jax.random.PRNGKey(0), IMAGES))
  last = f"block{kwargs['depth'] - 1}"

  @fast_jit
  def run(variables_cls, variables_mean, images):
    return [model.apply(variables, images, capture_intermediates=lambda m, _: m.name == last)
            for model, variables in ((cls_model, variables_cls), (mean_model, variables_mean))]

  (cls_out, cls_state), (mean_out, mean_state) = run(cls_variables, mean_variables, IMAGES)
  norm = params["final_norm"]
  cls_tokens = _layer_norm(cls_state["intermediates"][last]["__call__"][0], **norm)
  mean_tokens = _layer_norm(mean_state["intermediates"][last]["__call__"][0], **norm)
  assert cls_tokens.shape == (BATCH, 17, 16) and mean_tokens.shape == (BATCH, 16, 16)
  np.testing.assert_allclose(cls_out[0], cls_tokens[:, 0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(cls_out[1], cls_tokens[:, 1:], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mean_out[1], mean_tokens, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mean_out[0], mean_tokens.mean(axis=1), rtol=1e-4, atol=1e-4)
  assert jnp.abs(cls_out[0] - mean_out[0]).max() > 1e-2


def test_vit_dropout_only_in_train_mode_with_an_rng():
  base = cached_tower("vit")  # dropout=0; the same variables fit the model with dropout.
  model = ViT(**TINY["vit"][0], dropout=0.3)
  train = fast_jit(lambda images, key: model.apply(base.variables, images, train=True,
                                                  rngs={"dropout": key})[0])
  evaluated, _ = base.evaluate(IMAGES)
  key = lambda seed: jax.random.key(seed, impl="rbg")  # Compiles faster than threefry.
  first, again, other = train(IMAGES, key(1)), train(IMAGES, key(1)), train(IMAGES, key(2))
  np.testing.assert_array_equal(first, again)  # The rng alone decides the mask.
  assert jnp.abs(first - other).max() > 1e-3
  assert jnp.abs(first - evaluated).max() > 1e-3
  # Eval mode needs no rng and drops nothing.
  np.testing.assert_allclose(fast_jit(model.apply)(base.variables, IMAGES)[0], evaluated,
                             rtol=1e-5, atol=1e-5)
  # Without dropout (the base tower), train mode computes exactly what eval mode does.
  np.testing.assert_allclose(base.train(IMAGES)[2], evaluated, rtol=1e-5, atol=1e-5)


def test_resnet_v1_5_layout_and_shortcuts():
  """Standard stem /4, stride on the bottleneck's 3×3, projections only where shapes change."""
  model = ResNet(depth=50, width=4)
  images = jnp.zeros((1, 64, 64, 3))
  (_, sequence), state = jax.eval_shape(
      lambda: model.init_with_output(jax.random.PRNGKey(0), images, capture_intermediates=True))
  shapes = jax.tree.map(lambda x: x.shape, state["intermediates"])
  assert shapes["stem"]["__call__"][0] == (1, 32, 32, 4)  # 7×7/2; the max-pool halves again.
  block = shapes["stage2_block1"]
  assert block["conv1"]["__call__"][0] == (1, 16, 16, 8)  # The 1×1 keeps the resolution,
  assert block["conv2"]["__call__"][0] == (1, 8, 8, 8)  # the 3×3 downsamples (v1.5).
  assert block["shortcut"]["__call__"][0] == (1, 8, 8, 32)
  assert "shortcut" in state["intermediates"]["stage1_block1"]  # 16 → 64 channels.
  assert "shortcut" not in state["intermediates"]["stage1_block2"]
  assert sequence.shape == (1, 2 * 2, 4 * 32)  # 64 / 32 = 2; 32·width channels.
  basic = jax.eval_shape(ResNet(depth=18, width=4).init, jax.random.PRNGKey(0), images)
  assert "shortcut" not in basic["params"]["stage1_block1"]  # Same width, stride 1.
  assert "shortcut" in basic["params"]["stage2_block1"]


def _count(variables):
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("model, expected", [
    (ResNet(depth=18, num_classes=1000), 11_689_512),
    (ResNet(depth=34, num_classes=1000), 21_797_672),
    (ResNet(depth=50, num_classes=1000), 25_557_032),
    (ViT(variant="B", patch_size=16, num_classes=1000), 86_567_656),
    (VGG(layout="11", norm="none", pooling="fc", num_classes=1000), 132_863_336),
    (VGG(layout="16", norm="none", pooling="fc", num_classes=1000), 138_357_544),
], ids=["resnet18", "resnet34", "resnet50", "vit_b16", "vgg11", "vgg16"])
def test_parameter_counts_match_the_reference_implementations(model, expected):
  """torchvision (ResNet, VGG) and timm `vit_base_patch16_224`, 1000 classes, 224×224×3.

  Running statistics are state, not parameters, and are not counted.
  """
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  assert _count(variables) == expected
  pooled, _ = jax.eval_shape(model.apply, variables, images)
  assert pooled.shape == (1, 1000)  # With a head, pooled holds the logits.


def test_real_init_and_zero_init_residual():
  """A compiled `init` (of one block: compiling a whole ResNet's initialisers takes seconds):
  BatchNorm starts at mean 0, var 1, and `zero_init_residual` zeroes the last norm scale,
  so the block starts as relu(identity)."""
  block = BasicBlock(4, zero_init_residual=True, norm_kwargs=dict(norm="batch"))
  x = IMAGES[..., :1].repeat(4, axis=-1)  # [b, 32, 32, 4]: identity shortcut.
  key = jax.random.key(0, impl="rbg")  # Compiles much faster than the default threefry.
  y, variables = fast_jit(lambda x: block.init_with_output(key, x, train=False))(x)
  np.testing.assert_array_equal(variables["batch_stats"]["conv2"]["norm"]["mean"], 0.0)
  np.testing.assert_array_equal(variables["batch_stats"]["conv2"]["norm"]["var"], 1.0)
  np.testing.assert_array_equal(variables["params"]["conv2"]["norm"]["scale"], 0.0)
  np.testing.assert_array_equal(variables["params"]["conv1"]["norm"]["scale"], 1.0)
  assert float(jnp.std(variables["params"]["conv1"]["conv"]["kernel"])) > 0.0
  np.testing.assert_allclose(y, jax.nn.relu(x), atol=1e-6)


def test_stage_layout_and_named_vgg_layouts():
  assert stage_layout((64, 128, 256, 512, 512), (1, 1, 2, 2, 2)) == (
      64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
  assert stage_layout((8, 16), (1, 2)) == (8, "M", 16, 16, "M")
  assert VGG_LAYOUTS["16"].count("M") == 5 and len(VGG_LAYOUTS["16"]) - 5 == 13


def test_vgg_fc_pooling_shape():
  model = VGG(layout=(8, "M", 16, "M"), pooling="fc", fc_width=12, norm="none")
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), IMAGES)
  assert variables["params"]["fc1"]["kernel"].shape == (8 * 8 * 16, 12)
  pooled, sequence = jax.eval_shape(model.apply, variables, IMAGES)
  assert pooled.shape == (BATCH, 12) and sequence.shape == (BATCH, 64, 16)


@pytest.mark.parametrize("model, message", [
    (ResNet(depth=20), "18, 34, 50"),
    (ResNet(norm="layer"), "batch, group, none"),
    (ViT(variant="H"), "'B', 'L', 'S', 'Ti'"),
    (ViT(pooling="max", width=16, depth=1, heads=2), "'cls', 'mean'"),
    (ViT(patch_size=5, width=16, depth=1, heads=2), "multiple of the patch size"),
    (VGG(layout="12"), "'11', '13', '16', '19'"),
    (VGG(pooling="max"), "'fc', 'mean'"),
], ids=["depth", "norm", "variant", "vit_pooling", "patch", "layout", "vgg_pooling"])
def test_unknown_options_fail_listing_the_choices(model, message):
  with pytest.raises((ValueError, UnknownNameError), match=message):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), IMAGES)


@pytest.mark.parametrize("name", ["vgg", "resnet", "vit"])
def test_dual_encoder_builds_with_each_image_encoder(name):
  kwargs, pooled_shape, _ = TINY[name]
  model = DualEncoder(text_encoder="bag_of_words", text_kwargs=dict(vocab_size=20, width=8),
                      image_encoder=name, image_kwargs=kwargs, embed_dim=8)
  tokens = jnp.ones((BATCH, 5), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, IMAGES)
  projection = variables["params"]["image_projection"]["mlp"]["out"]["kernel"]
  assert projection.shape == (pooled_shape[1], 8)
  assert ("batch_stats" in variables) == (name in WITH_BATCH_NORM)
