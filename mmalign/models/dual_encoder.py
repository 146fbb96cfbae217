"""Dual encoder: two towers projected into one L2-normalised space, plus optional fusion.

With `fusion` set, the model also scores image–text matching (ITM): each caption is fused
with its own image (label 1) and the next example's (label 0), and a one-logit head says
whether they match. Batches hold distinct captions, so the rolled pairs are true negatives.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmalign.models import clip_text, image_encoders, recurrent, text_encoders  # noqa: F401
from mmalign.models.fusion import FusionInputs, build_fusion
from mmalign.models.heads import Classifier, Projection, l2_normalize  # noqa: F401
from mmalign.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS


class DualEncoder(nn.Module):
  """Text and image towers chosen by name, projection heads, learnable scale.

  The scale (InfoNCE inverse temperature) is learned as its log, so it stays positive,
  and clipped at `max_scale` as in CLIP. `num_classes > 0` without fusion raises ValueError.
  """
  text_encoder: str
  text_kwargs: dict[str, Any]
  image_encoder: str
  image_kwargs: dict[str, Any]
  embed_dim: int = 256
  projection_kwargs: dict[str, Any] | None = None  # Projection head: hidden, dropout.
  # Per tower, over projection_kwargs (SigLIP: the text head has a bias, the image none).
  text_projection_kwargs: dict[str, Any] | None = None
  image_projection_kwargs: dict[str, Any] | None = None
  init_scale: float = 10.0
  max_scale: float = 100.0
  init_bias: float = -10.0  # The sigmoid loss's learnable bias (SigLIP's initial value).
  fusion: str | None = None
  fusion_kwargs: dict[str, Any] | None = None
  num_classes: int = 0  # > 0: a task classifier on the fused pair (needs fusion).
  modality_dropout: float = 0.0  # Training-time chance that an example loses one modality.
  # Towers ("text_tower", "image_tower") that run in inference mode even in training: a
  # locked tower (LiT) has no dropout and keeps its BatchNorm statistics as they are.
  locked_towers: tuple[str, ...] = ()

  def setup(self):
    self.text_tower = TEXT_ENCODERS.get(self.text_encoder, config_key="model.text_encoder")(
        **self.text_kwargs)
    self.image_tower = IMAGE_ENCODERS.get(self.image_encoder,
                                          config_key="model.image_encoder")(**self.image_kwargs)
    shared = dict(self.projection_kwargs or {})
    self.text_projection = Projection(self.embed_dim,
                                      **{**shared, **(self.text_projection_kwargs or {})})
    self.image_projection = Projection(self.embed_dim,
                                       **{**shared, **(self.image_projection_kwargs or {})})
    self.log_scale = self.param("log_scale", nn.initializers.constant(np.log(self.init_scale)),
                                ())
    self.bias = self.param("bias", nn.initializers.constant(self.init_bias), ())
    if self.fusion is not None:
      self.fusion_module = build_fusion(self.fusion, config_key="model.fusion",
                                        **(self.fusion_kwargs or {}))
      self.match_head = Classifier(num_classes=1)
    if self.num_classes:
      if self.fusion is None:
        raise ValueError("num_classes > 0 needs a fusion module to classify the fused pair")
      self.task_head = Classifier(num_classes=self.num_classes)

  def embed_text(self, tokens, *, train: bool = False):
    """tokens [b, l] int32 → [b, embed_dim] float32, unit norm."""
    return self.text_projection(self._tower("text_tower", tokens, train)[0], train=train)

  def embed_image(self, images, *, train: bool = False):
    """images [b, h, w, c] float32 → [b, embed_dim] float32, unit norm."""
    return self.image_projection(self._tower("image_tower", images, train)[0], train=train)

  def _tower(self, name: str, inputs, train: bool):
    """(pooled, sequence) of the tower `name`; a locked tower always runs in inference mode."""
    return getattr(self, name)(inputs, train=train and name not in self.locked_towers)

  def scale(self):
    return jnp.minimum(jnp.exp(self.log_scale), self.max_scale)

  def __call__(self, tokens, images, *, train: bool = False) -> dict[str, jnp.ndarray]:
    """{"text_emb", "image_emb" [b, embed_dim], "scale", "bias"} (+ "match_logits",
    "match_labels" [2b] with fusion). The bias is used by the sigmoid loss only."""
    text = self._tower("text_tower", tokens, train)  # (pooled, seq)
    image = self._tower("image_tower", images, train)
    outputs = {"text_emb": self.text_projection(text[0], train=train),
               "image_emb": self.image_projection(image[0], train=train),
               "scale": self.scale(), "bias": self.bias}
    if self.fusion is not None:
      outputs.update(self._match(tokens, text, image, train=train))
    if self.num_classes:
      present = (sample_present(self.make_rng("dropout"), tokens.shape[0], self.modality_dropout)
                 if train and self.modality_dropout else None)  # None: both modalities
      outputs["class_logits"] = self._classify(tokens, text, image, present, train=train)
    return outputs

  def classify(self, tokens, images, present=None):
    """Eval-mode class logits [b, num_classes]; present [b, 2] bool (text, image) or None."""
    text = self.text_tower(tokens, train=False)
    image = self.image_tower(images, train=False)
    return self._classify(tokens, text, image, present, train=False)

  def _classify(self, tokens, text, image, present, *, train: bool):
    inputs = FusionInputs.create(text, image, text_mask=tokens != 0, present=present)
    return self.task_head(self.fusion_module(inputs, train=train), train=train)

  def _match(self, tokens, text, image, *, train: bool) -> dict[str, jnp.ndarray]:
    twice = lambda x: jnp.concatenate([x, x], axis=0)  # noqa: E731
    # Each caption with its own image, then with the next example's.
    pairs = tuple(jnp.concatenate([x, jnp.roll(x, 1, axis=0)], axis=0) for x in image)
    inputs = FusionInputs.create(tuple(map(twice, text)), pairs, text_mask=twice(tokens != 0))
    logits = self.match_head(self.fusion_module(inputs, train=train), train=train)[:, 0]
    labels = jnp.repeat(jnp.array([1.0, 0.0]), tokens.shape[0])
    return {"match_logits": logits, "match_labels": labels}  # [2b] each


def sample_present(key: jax.Array, batch: int, rate: float) -> jnp.ndarray:
  """present [b, 2] bool (text, image): each example keeps both with prob 1 − rate,
  else loses its text or its image at even odds; never both."""
  drop_key, which_key = jax.random.split(key)
  dropped = jax.random.bernoulli(drop_key, rate, (batch,))
  loses_text = jax.random.bernoulli(which_key, 0.5, (batch,))
  return jnp.stack([~(dropped & loses_text), ~(dropped & ~loses_text)], axis=1)
