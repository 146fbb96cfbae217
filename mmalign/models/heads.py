"""Heads: what turns a fused or pooled vector into the quantity a loss wants.

Every head maps `x [batch, dim]` to `[batch, out]` in float32 whatever the compute dtype:
normalisation, softmax and sigmoid losses lose too much in bfloat16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def l2_normalize(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """Rows scaled to unit norm; a zero row stays zero instead of becoming NaN."""
  return x * jnp.reciprocal(jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps))


class MLP(nn.Module):
  """GELU hidden layers (with dropout) then a linear layer; `hidden=()` is a linear map."""
  out_dim: int
  hidden: Sequence[int] = ()
  dropout: float = 0.0  # After each hidden activation, training only.
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    x = x.astype(self.dtype)
    for n, features in enumerate(self.hidden):
      x = nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"hidden_{n}")(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(x))
    return nn.Dense(self.out_dim, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="out")(x)


class Projection(nn.Module):
  """Into the shared embedding space: [b, dim] → [b, out_dim] float32.

  With `l2_normalize` rows have unit norm. No bias by default, as in CLIP: it would shift
  every embedding the same way. `linear=False` has no parameters: the tower's output is
  the embedding (SigLIP's image side), so its width must be `out_dim` (else ValueError).
  """
  out_dim: int
  hidden: Sequence[int] = ()
  l2_normalize: bool = True
  use_bias: bool = False
  dropout: float = 0.0
  linear: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    if self.linear:
      x = MLP(self.out_dim, self.hidden, self.dropout, self.use_bias, self.dtype,
              self.param_dtype, name="mlp")(x, train=train)
    elif x.shape[-1] != self.out_dim:
      raise ValueError(f"a projection with linear=False keeps the tower's width {x.shape[-1]}, "
                       f"which differs from embed_dim={self.out_dim}")
    y = x.astype(jnp.float32)
    return l2_normalize(y) if self.l2_normalize else y


class Classifier(nn.Module):
  """Single-label classification: [b, dim] → logits [b, num_classes] float32 (for softmax CE)."""
  num_classes: int
  hidden: Sequence[int] = ()
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    return MLP(self.num_classes, self.hidden, self.dropout, True, self.dtype, self.param_dtype,
               name="mlp")(x, train=train).astype(jnp.float32)
