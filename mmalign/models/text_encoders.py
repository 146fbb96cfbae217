"""Text encoders over subword tokens. Padding (id 0) is masked everywhere."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmalign.models.registry import register_text_encoder


def masked_mean(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over valid positions: x [b, l, w], mask [b, l] → [b, w]; all-pad rows give 0."""
  mask = mask[..., None].astype(x.dtype)
  return (x * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


@register_text_encoder("bag_of_words")
class BagOfWords(nn.Module):
  """Mean-pooled token embeddings followed by an MLP: the classic strong baseline.

  Word order is ignored, which is right for names that compose from parts
  ("latin small letter a" + "with grave") and makes the encoder cheap.
  """
  vocab_size: int
  width: int = 256
  mlp_layers: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    mask = tokens != 0  # [b, l]
    seq = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="embed")(tokens)
    pooled = masked_mean(seq, mask)
    for i in range(self.mlp_layers):
      pooled = pooled + nn.Dense(self.width, dtype=self.dtype, name=f"mlp_{i}")(
          nn.gelu(nn.LayerNorm(dtype=self.dtype, name=f"mlp_norm_{i}")(pooled)))
    return pooled, seq


class _Block(nn.Module):
  """Pre-LayerNorm Transformer block (attention then MLP, both residual)."""
  width: int
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, *, train: bool):
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                        dropout_rate=self.dropout,
                                        deterministic=not train)(y, y, mask=attention_mask)
    x = x + y
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.Dense(self.width * self.mlp_ratio, dtype=self.dtype)(y)
    y = nn.Dense(self.width, dtype=self.dtype)(nn.gelu(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return x + y


@register_text_encoder("transformer")
class TextTransformer(nn.Module):
  """Pre-LN Transformer with learned positions and masked mean pooling."""
  vocab_size: int
  max_length: int = 16
  width: int = 256
  depth: int = 2
  heads: int = 4
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    mask = tokens != 0  # [b, l]
    x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="embed")(tokens)
    pos = self.param("positions", nn.initializers.normal(0.02),
                     (self.max_length, self.width))
    x = x + pos[None, :tokens.shape[1]].astype(self.dtype)
    attention_mask = nn.make_attention_mask(mask, mask)  # [b, 1, l, l]
    for i in range(self.depth):
      x = _Block(self.width, self.heads, dropout=self.dropout, dtype=self.dtype,
                 name=f"block_{i}")(x, attention_mask, train=train)
    x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    return masked_mean(x, mask), x
