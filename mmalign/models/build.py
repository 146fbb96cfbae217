"""Builds the model a config describes."""

from __future__ import annotations

import ml_collections

from mmalign.models.dual_encoder import DualEncoder
from mmalign.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS


def build_dual_encoder(model_config: ml_collections.ConfigDict, vocab_size: int,
                       max_length: int) -> DualEncoder:
  """The text tower gets the tokenizer's vocabulary size (and length where it has one)."""
  # Look the names up now, so a typo fails before any work rather than inside init.
  TEXT_ENCODERS.get(model_config.text_encoder, config_key="model.text_encoder")
  IMAGE_ENCODERS.get(model_config.image_encoder, config_key="model.image_encoder")
  text_kwargs = dict(model_config.text_kwargs)
  text_kwargs["vocab_size"] = vocab_size
  if model_config.text_encoder == "transformer":
    text_kwargs.setdefault("max_length", max_length)
  return DualEncoder(
      text_encoder=model_config.text_encoder, text_kwargs=text_kwargs,
      image_encoder=model_config.image_encoder, image_kwargs=dict(model_config.image_kwargs),
      embed_dim=model_config.embed_dim, init_scale=model_config.init_scale)
