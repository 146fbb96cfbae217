"""The tiny config's dual encoder on a random batch, for step-level tests without a dataset."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import tiny
from mmalign.losses.objective import build_objective
from mmalign.models.build import build_dual_encoder

BATCH, LENGTH, VOCAB = 16, 24, 128


def config(loss: str = "infonce", image_encoder: str = "cnn"):
  """tiny.py with `loss.name` and the image encoder ("vgg" in tiny has BatchNorm)."""
  c = tiny.get_config()
  c.loss.name = loss
  c.model.image_encoder = image_encoder
  return c


def random_batch(batch: int = BATCH) -> dict:
  """tokens [b, 24] int32 (about 30% padding), images [b, 16, 16, 1] float32, groups [b]."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, VOCAB, (batch, LENGTH)) * (rng.random((batch, LENGTH)) < 0.7)
  return {"tokens": jnp.asarray(tokens, jnp.int32),
          "images": jnp.asarray(rng.normal(size=(batch, 16, 16, 1)), jnp.float32),
          "groups": jnp.arange(batch)}


@functools.cache
def setup(loss: str = "infonce", image_encoder: str = "cnn"):
  """(model, objective, params, model_state); callers must not donate these params."""
  c = config(loss, image_encoder)
  model = build_dual_encoder(c.model, vocab_size=VOCAB, max_length=LENGTH)
  batch = random_batch(1)
  variables = dict(jax.jit(model.init)(jax.random.key(0), batch["tokens"], batch["images"]))
  params = variables.pop("params")
  return model, build_objective(c.loss, model_fuses=False), params, variables
