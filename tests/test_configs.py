"""Every config under experiments/configs/ parses and builds a model that runs, and every
registered encoder and fusion module can be switched in by overrides alone."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from experiments.configs import quickstart, tiny
from mmalign.data import sources
from mmalign.models.build import build_dual_encoder
from mmalign.models.fusion import FUSIONS
from mmalign.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def _runs(config, image_shape=None):
  if image_shape is None and config.data.name not in sources.DATASETS.names():
    image_shape = (config.data.image_size, config.data.image_size, 3)  # A prepared dataset.
  if image_shape is None:
    builder = sources.get_builder(config.data.name, config.data.config)
    image_shape = builder.info.features["image"].shape  # Known without building.
  model = build_dual_encoder(config.model, vocab_size=config.text.vocab_size,
                             max_length=config.text.max_length)
  tokens = jnp.ones((2, config.text.max_length), jnp.int32)
  images = jnp.zeros((2, *image_shape), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), tokens, images)
  outputs = jax.jit(model.apply)(variables, tokens, images)
  assert outputs["text_emb"].shape == outputs["image_emb"].shape == (2, config.model.embed_dim)
  assert jnp.isfinite(outputs["scale"])
  return outputs


def test_there_are_configs():
  assert {"quickstart", "tiny"} <= set(CONFIGS)


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow)
                                  if name in ("clip", "siglip", "coco_lit", "zero_shot_imagenet")
                                  else name
                                  for name in CONFIGS])  # Published sizes: ViT-B.
def test_config_builds_and_runs_its_model(name):
  _runs(importlib.import_module(f"experiments.configs.{name}").get_config())


def test_quickstart_has_a_kwargs_block_for_every_registered_component():
  model = quickstart.get_config().model
  assert set(model.text_kwargs) == set(TEXT_ENCODERS.names())
  assert set(model.image_kwargs) == set(IMAGE_ENCODERS.names())
  assert set(model.fusion_kwargs) == set(FUSIONS.names())


@pytest.mark.parametrize("kind, names", [("text_encoder", TEXT_ENCODERS.names()),
                                         ("image_encoder", IMAGE_ENCODERS.names()),
                                         ("fusion", FUSIONS.names())])
def test_each_component_switches_in_by_override(kind, names):
  for name in names:
    config = tiny.get_config()
    config.model[kind] = name
    outputs = _runs(config, image_shape=(32, 32, 1))
    if kind == "fusion":
      assert outputs["match_logits"].shape == outputs["match_labels"].shape == (4,)
