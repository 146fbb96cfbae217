"""Text encoders over subword tokens, and the masking pieces every text encoder shares.

Contract (see `registry.py`): `tokens [b, l] int32`, 0 = padding on the right. Appending pads
never changes the pooled vector, and `sequence` is exactly zero at padded positions, so a
fusion module may sum or attend over it without its own mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmalign.errors import UsageError
from mmalign.models.registry import register_text_encoder
from mmalign.registry import UnknownNameError

T = TypeVar("T")


def choose(kind: str, name: str, options: Mapping[str, T]) -> T:
  """Looks a string kwarg up, so a config typo lists the allowed values at init."""
  if name not in options:
    raise UnknownNameError(f"unknown {kind} {name!r}; allowed: {', '.join(sorted(options))}")
  return options[name]


def masked_mean(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over valid positions: x [b, l, w], mask [b, l] → [b, w]; all-pad rows give 0."""
  mask = mask[..., None].astype(x.dtype)
  return (x * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def masked_max(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Max over valid positions: x [b, l, w], mask [b, l] → [b, w]; all-pad rows give 0.

  Pads are filled with the lowest finite value, not -inf, so neither output nor gradient
  can become -inf or NaN.
  """
  mask = mask[..., None]  # [b, l, 1]
  best = jnp.where(mask, x, jnp.finfo(x.dtype).min).max(axis=1)  # [b, w]
  return jnp.where(mask.any(axis=1), best, jnp.zeros_like(best))


POOLINGS = {"mean": masked_mean, "max": masked_max}


def load_embedding_table(path: str, shape: tuple[int, int]) -> np.ndarray:
  """Reads a saved `[vocab_size, width]` float table (e.g. GloVe rows in tokenizer id order).

  Raises UsageError, naming both shapes, for an unreadable file or another shape or dtype.
  """
  try:
    table = np.load(path, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError) as error:
    raise UsageError(f"init_embeddings: cannot read {path!r} as a .npy array: {error}") from error
  if tuple(table.shape) != tuple(shape) or not np.issubdtype(table.dtype, np.floating):
    raise UsageError(
        f"init_embeddings file {path!r} holds a {table.dtype} array of shape "
        f"{tuple(table.shape)}; expected a float array of shape [vocab_size, width] = "
        f"{tuple(shape)}")
  return np.asarray(table)


class TokenEmbedding(nn.Module):
  """Token id → vector table `embedding [vocab_size, width]`, optionally from a `.npy` file.

  The file is read only at init; a restored checkpoint never needs it. `frozen` gives a zero
  gradient, but weight decay still shrinks the table unless the trainer masks it out.
  """
  vocab_size: int
  width: int
  init_file: str | None = None
  frozen: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
    """tokens [b, l] int32 → [b, l, width] in the compute dtype."""
    init = nn.linear.default_embed_init if self.init_file is None else (
        lambda key, shape, dtype: jnp.asarray(load_embedding_table(self.init_file, shape), dtype))
    table = self.param("embedding", init, (self.vocab_size, self.width), self.param_dtype)
    if self.frozen:
      table = jax.lax.stop_gradient(table)
    return jnp.take(table, tokens, axis=0).astype(self.dtype)


@register_text_encoder("bag_of_words")
class BagOfWords(nn.Module):
  """Pooled token embeddings followed by a residual MLP: the classic strong baseline.

  Word order is ignored, which suits names composed of parts ("latin small letter a" +
  "with grave"). `pooling="max"` suits pretrained tables, whose rare content words a mean
  would dilute. `sequence` is the token embeddings, zero at padding.
  """
  vocab_size: int
  width: int = 256
  mlp_layers: int = 1
  pooling: str = "mean"  # "mean" or "max", over valid tokens.
  dropout: float = 0.0  # On the pooled embedding, before the MLP.
  init_embeddings: str | None = None  # .npy [vocab_size, width] float.
  freeze_embeddings: bool = False  # Also list the table in train.frozen: AdamW decays it otherwise.
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    pool = choose("bag_of_words pooling", self.pooling, POOLINGS)
    mask = tokens != 0  # [b, l]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    seq = TokenEmbedding(self.vocab_size, self.width, self.init_embeddings,
                         self.freeze_embeddings, name="embed", **kw)(tokens)
    seq = seq * mask[..., None].astype(seq.dtype)  # [b, l, w]
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pool(seq, mask))  # [b, w]
    for i in range(self.mlp_layers):
      norm = nn.LayerNorm(name=f"mlp_norm_{i}", **kw)
      pooled = pooled + nn.Dense(self.width, name=f"mlp_{i}", **kw)(nn.gelu(norm(pooled)))
    return pooled, seq


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
  """Fixed sin/cos encodings of Vaswani et al. (2017), `[length, width]` float32; any length."""
  angles = np.arange(length)[:, None] / 10000.0 ** (np.arange(0, width, 2) / width)
  table = np.zeros((length, width), np.float64)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles[:, :width // 2])
  return table.astype(np.float32)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm Transformer block (attention then MLP, both residual)."""
  width: int
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.LayerNorm(**kw)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout,
                                        deterministic=not train, **kw)(y, y, mask=attention_mask)
    x = x + y
    y = nn.LayerNorm(**kw)(x)
    y = nn.Dense(self.width * self.mlp_ratio, **kw)(y)
    y = nn.Dense(self.width, **kw)(nn.gelu(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return x + y


@register_text_encoder("transformer")
class TextTransformer(nn.Module):
  """Pre-LN Transformer over tokens; masked mean or CLS pooling.

  `positions="sinusoidal"` ignores `max_length`; `"learned"` owns a `positions [max_length,
  width]` table (longer inputs raise UsageError). `causal=True` lets each token attend only to
  itself and earlier tokens. `pooling="cls"` appends a learned `cls [width]` token, without a
  position, after the last (padded) position: without `causal` that equals a prepended CLS, and
  with it the CLS reads every token while no token reads it. `sequence [b, l, width]` never
  includes the CLS.
  """
  vocab_size: int
  max_length: int = 16
  width: int = 256
  depth: int = 2
  heads: int = 4
  dropout: float = 0.0
  positions: str = "learned"  # Or "sinusoidal".
  pooling: str = "mean"  # Or "cls".
  causal: bool = False
  init_embeddings: str | None = None  # .npy [vocab_size, width] float.
  freeze_embeddings: bool = False  # Also list the table in train.frozen: AdamW decays it otherwise.
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    learned = choose("transformer positions", self.positions,
                     {"learned": True, "sinusoidal": False})
    use_cls = choose("transformer pooling", self.pooling, {"mean": False, "cls": True})
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, length = tokens.shape
    mask = tokens != 0  # [b, l]
    x = TokenEmbedding(self.vocab_size, self.width, self.init_embeddings, self.freeze_embeddings,
                       name="embed", **kw)(tokens)
    if learned:
      if length > self.max_length:
        raise UsageError(f"transformer: {length} tokens exceed max_length={self.max_length} "
                         "of the learned position table")
      positions = self.param("positions", nn.initializers.normal(0.02),
                             (self.max_length, self.width), self.param_dtype)[:length]
    else:
      positions = jnp.asarray(sinusoidal_positions(length, self.width))
    x = x + positions[None].astype(self.dtype)  # [b, l, w]
    valid = mask
    if use_cls:
      cls = self.param("cls", nn.initializers.normal(0.02), (self.width,), self.param_dtype)
      x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width))],
                          axis=1)  # [b, l + 1, w]
      valid = jnp.concatenate([mask, jnp.ones((batch, 1), bool)], axis=1)
    attention_mask = nn.make_attention_mask(valid, valid)  # [b, 1, l', l']
    if self.causal:
      attention_mask = nn.combine_masks(attention_mask, nn.make_causal_mask(valid))
    for i in range(self.depth):
      x = TransformerBlock(self.width, self.heads, dropout=self.dropout, name=f"block_{i}",
                           **kw)(x, attention_mask, train=train)
    x = nn.LayerNorm(name="final_norm", **kw)(x)
    sequence = x[:, :length] * mask[..., None].astype(x.dtype)  # [b, l, w]
    pooled = x[:, length] if use_cls else masked_mean(sequence, mask)  # [b, w]
    return pooled, sequence
