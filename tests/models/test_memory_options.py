"""Rematerialisation and scan over layers (ViT, clip_text): the plain path's outputs and
gradients, less temporary memory, and published weights load into either layout."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from mmalign.checkpoints import importers
from mmalign.models.clip_text import CausalTextTransformer
from mmalign.models.vit import ViT

DEPTH = 3
VIT = dict(width=32, depth=DEPTH, heads=4, patch_size=8, pooling="map", dropout=0.0)
TEXT = dict(vocab_size=10, max_length=5, width=32, depth=DEPTH, heads=4)
IMAGES = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
TOKENS = jnp.array([[5, 3, 9, 0, 0], [7, 9, 1, 2, 4]], jnp.int32)
CASES = [(ViT, VIT, IMAGES), (CausalTextTransformer, TEXT, TOKENS)]


def stacked(params: dict) -> dict:
  """`block{i}/...` → `blocks/...` with a leading layer axis, as a scanned model holds them."""
  flat = traverse_util.flatten_dict(params, sep="/")
  out = {k: v for k, v in flat.items() if not k.split("/")[0][5:].isdigit()}
  for key in {k.split("/", 1)[1] for k in flat if k.startswith("block0/")}:
    out[f"blocks/{key}"] = jnp.stack([flat[f"block{i}/{key}"] for i in range(DEPTH)])
  return traverse_util.unflatten_dict(out, sep="/")


def _loss_and_grads(module, params, inputs):
  def loss(p):
    pooled, sequence = module.apply({"params": p}, inputs)
    return (pooled ** 2).sum() + (sequence ** 3).mean()
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat, scan", [("full", False), ("dots", False), ("none", True),
                                         ("full", True)])
@pytest.mark.parametrize("cls, kwargs, inputs", CASES, ids=["vit", "clip_text"])
def test_same_outputs_and_gradients_as_the_plain_path(cls, kwargs, inputs, remat, scan):
  params = cls(**kwargs).init(jax.random.key(0), inputs)["params"]
  loss, grads = _loss_and_grads(cls(**kwargs), params, inputs)
  module = cls(**kwargs, remat=remat, scan_layers=scan)
  layout = stacked(params) if scan else params
  assert (jax.tree.structure(jax.eval_shape(module.init, jax.random.key(0), inputs)["params"])
          == jax.tree.structure(layout))
  got_loss, got_grads = _loss_and_grads(module, layout, inputs)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
  expected = stacked(grads) if scan else grads
  # Relative to the largest gradient: some are zero up to rounding (a key bias's, say).
  scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(expected))
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_rematerialisation_in_a_scan_lowers_the_compiled_steps_temporary_memory():
  """Through a scan, each layer's activations are recomputed, not stored (XLA:CPU keeps an
  unrolled remat's recomputed values alive as long as the stored ones: no saving there)."""
  kwargs = dict(width=64, depth=4, heads=4, patch_size=4)
  images = jnp.zeros((32, 32, 32, 3))

  def temp_bytes(remat: str, scan: bool) -> int:
    module = ViT(**kwargs, remat=remat, scan_layers=scan)
    params = jax.eval_shape(module.init, jax.random.key(0), images[:1])["params"]
    grad = jax.jit(jax.grad(lambda p: (module.apply({"params": p}, images)[0] ** 2).sum()))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes
  plain = temp_bytes("none", False)
  assert temp_bytes("full", True) < temp_bytes("dots", True) < plain / 2


def test_an_unknown_policy_is_refused():
  with pytest.raises(ValueError, match=r"remat 'some' is not one of \['none', 'full', 'dots'\]"):
    ViT(**VIT, remat="some").init(jax.random.key(0), IMAGES)


def test_published_weights_load_into_scanned_layers():
  """The tiny CLIP fixture into scanned, rematerialised towers: transformers' outputs."""
  from tests.checkpoints.test_hf_clip import (  # pylint: disable=import-outside-toplevel
      TINY, TINY_IO, assert_close, dual_variables, features, tiny_dual_encoder)
  io = np.load(TINY_IO, allow_pickle=False)
  model = tiny_dual_encoder(scan_layers=True, remat="full")
  variables = dual_variables(model)
  assert "blocks" in variables["params"]["image_tower"]
  variables, lines = importers.initialise(
      variables, ml_collections.ConfigDict({"checkpoint": TINY, "format": None}), None)
  assert "newly initialised: 1 tensors (1 values): params/bias" in lines[1]
  text, image = features(model, variables, io["token_ids"].astype(np.int32), io["images"])
  assert_close(text, io["text_features"])
  assert_close(image, io["image_features"])
