"""Builds the model a config describes.

Configs keep one kwargs block per registered name (`model.text_kwargs.lstm`, ...), so
switching a component is one override (`--config.model.text_encoder=lstm`) and tuning it
another (`--config.model.text_kwargs.lstm.bidirectional=True`).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mmalign import settings
from mmalign.errors import UsageError
from mmalign.models.dual_encoder import DualEncoder
from mmalign.models.fusion import FUSIONS
from mmalign.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS


# DualEncoder settings a config may set (a published architecture's, e.g. SigLIP's); absent,
# the DualEncoder's defaults apply and the resolved config (checkpoint metadata) omits them.
OPTIONAL_KEYS = ("text_projection_kwargs", "image_projection_kwargs", "max_scale", "init_bias")


def _plain(value):
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def _kwargs_for(blocks, name: str) -> dict[str, Any]:
  """The kwargs block of `name` (empty when the config has none for it)."""
  return {} if blocks is None or name not in blocks else dict(_plain(blocks[name]))


def resolved_model_config(model_config: ml_collections.ConfigDict,
                          num_classes: int = 0) -> dict[str, Any]:
  """Only what defines the chosen model (checkpoints compare this, not unused blocks).

  num_classes: size of the task classifier (0: none), from the dataset's label.
  """
  # Look the names up now, so a typo fails before any work rather than inside init.
  TEXT_ENCODERS.get(model_config.text_encoder, config_key="model.text_encoder")
  IMAGE_ENCODERS.get(model_config.image_encoder, config_key="model.image_encoder")
  fusion = model_config.get("fusion")
  if fusion is not None:
    FUSIONS.get(fusion, config_key="model.fusion")
  resolved = {
      "text_encoder": model_config.text_encoder,
      "text_kwargs": _kwargs_for(model_config.get("text_kwargs"), model_config.text_encoder),
      "image_encoder": model_config.image_encoder,
      "image_kwargs": _kwargs_for(model_config.get("image_kwargs"), model_config.image_encoder),
      "embed_dim": model_config.embed_dim,
      "projection_kwargs": dict(model_config.get("projection_kwargs") or {}),
      "init_scale": model_config.init_scale,
      "fusion": fusion,
      "fusion_kwargs": _kwargs_for(model_config.get("fusion_kwargs"), fusion) if fusion else {},
  }
  if num_classes:  # Only then, so checkpoints of models without a task head still match.
    resolved["num_classes"] = int(num_classes)
  for key in OPTIONAL_KEYS:  # Likewise: only when a config sets them.
    if model_config.get(key) is not None:
      resolved[key] = _plain(model_config[key])
  return resolved


def build_dual_encoder(model_config: ml_collections.ConfigDict, vocab_size: int,
                       max_length: int, num_classes: int = 0) -> DualEncoder:
  """The text tower gets the tokenizer's vocabulary size (and length where it has one).

  Raises UsageError for a task label without fusion. `model.modality_dropout` (range checked
  by settings.check) is a training setting, not checkpointed architecture, so it is passed
  beside the resolved config.
  """
  resolved = resolved_model_config(model_config, num_classes)
  if num_classes and resolved["fusion"] is None:
    raise UsageError("task.label trains a classifier on the fused pair: set model.fusion "
                     "(e.g. --config.model.fusion=concat)")
  modality_dropout = float(settings.value(model_config, "modality_dropout", section="model"))
  text_kwargs = dict(resolved.pop("text_kwargs"), vocab_size=vocab_size)
  if resolved["text_encoder"] in ("transformer", "clip_text"):
    text_kwargs.setdefault("max_length", max_length)
  return DualEncoder(text_kwargs=text_kwargs, modality_dropout=modality_dropout, **resolved)
