"""Every config under experiments/configs/ parses and builds a model that runs."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from mmalign.data import sources
from mmalign.models.build import build_dual_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def test_there_are_configs():
  assert {"quickstart", "tiny"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_runs_its_model(name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  builder = sources.get_builder(config.data.name, config.data.config)
  image_shape = builder.info.features["image"].shape  # Known without building.
  model = build_dual_encoder(config.model, vocab_size=config.text.vocab_size,
                             max_length=config.text.max_length)
  tokens = jnp.ones((2, config.text.max_length), jnp.int32)
  images = jnp.zeros((2, *image_shape), jnp.float32)
  params = model.init(jax.random.key(0), tokens, images)
  text_emb, image_emb, scale = model.apply(params, tokens, images)
  assert text_emb.shape == image_emb.shape == (2, config.model.embed_dim)
  assert jnp.isfinite(scale)
