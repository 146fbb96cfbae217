"""CLIP's text tower (Radford et al. 2021): a causal Transformer read at the end-of-text token.

Laid out like OpenAI's and open_clip's `encode_text` and Hugging Face's `CLIPTextModel`, so
their weights give their outputs here (mmalign/checkpoints). Why causal and read at the EOT
token rather than masked by padding: the published weights were trained that way; it also
means CLIP's vocabulary may use id 0 for a real token ("!"), where other text encoders treat
0 as padding: here a token is padding when it comes after the EOT token.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmalign.errors import UsageError
from mmalign.models.registry import register_text_encoder
from mmalign.models.text_encoders import TokenEmbedding
from mmalign.models.vit import ACTIVATIONS, transformer_layers


@register_text_encoder("clip_text")
class CausalTextTransformer(nn.Module):
  """Token + learned position embeddings, `depth` pre-LN blocks with a causal mask, a final
  LayerNorm over every token.

  Outputs: `pooled [b, width]`, the final state at each row's end-of-text token: the first
  token equal to `eot_id`, or with `eot_id=None` the first of the row's highest id (CLIP's
  EOT is the last id of its vocabulary, and open_clip reads it so); `sequence [b, l, width]`,
  the final states up to and including that token, zero after it (and all zero for a row of
  padding only). SigLIP's text tower is this Transformer with `causal=False,
  pooling="last"`: its tokenizer pads every row to the full length with its own pad token,
  and `pooled` is the last position's state, `sequence` every state (no token is padding to
  the model). Raises UsageError for
  more tokens than `max_length` (the position table's size).
  """
  vocab_size: int
  max_length: int = 77
  width: int = 512
  depth: int = 12
  heads: int = 8
  mlp_dim: int | None = None  # Default 4·width.
  activation: str = "quick_gelu"  # One of vit.ACTIVATIONS: OpenAI's models use quick_gelu.
  norm_epsilon: float = 1e-5
  eot_id: int | None = None
  causal: bool = True  # False: every token attends to every token (SigLIP).
  pooling: str = "eot"  # Or "last": the final state at the last position (SigLIP).
  dropout: float = 0.0
  freeze_embeddings: bool = False  # Also list the table in train.frozen: AdamW decays it otherwise.
  remat: str = "none"  # Memory: one of vit.REMAT_POLICIES (vit.transformer_layers).
  scan_layers: bool = False  # Compile one block: parameters stacked under `blocks`.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"clip_text activation {self.activation!r} is not one of "
                       f"{list(ACTIVATIONS)}")
    if self.pooling not in ("eot", "last"):
      raise ValueError(f"clip_text pooling {self.pooling!r} is not one of ['eot', 'last']")
    batch, length = tokens.shape
    if length > self.max_length:
      raise UsageError(f"clip_text: {length} tokens exceed max_length={self.max_length} "
                       "of the position table")
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = TokenEmbedding(self.vocab_size, self.width, frozen=self.freeze_embeddings, name="embed",
                       **dense)(tokens)
    positions = self.param("positions", nn.initializers.normal(0.01),
                           (self.max_length, self.width), self.param_dtype)
    x = x + positions[:length].astype(self.dtype)  # [b, l, width]
    mask = nn.make_causal_mask(tokens) if self.causal else None  # [b, 1, l, l]
    x = transformer_layers(
        x, mask, depth=self.depth, train=train, remat=self.remat, scan=self.scan_layers,
        block=dict(heads=self.heads, mlp_dim=self.mlp_dim or 4 * self.width,
                   dropout=self.dropout, activation=self.activation,
                   norm_epsilon=self.norm_epsilon, **dense))
    x = nn.LayerNorm(epsilon=self.norm_epsilon, name="final_norm", **dense)(x)
    if self.pooling == "last":
      return x[:, -1], x
    ends = tokens if self.eot_id is None else (tokens == self.eot_id).astype(jnp.int32)
    end = jnp.argmax(ends, axis=-1)  # [b], the first maximum.
    pooled = x[jnp.arange(batch), end]  # [b, width]
    # [b, l]; a row of padding only (no EOT) has no valid token.
    valid = (jnp.arange(length)[None] <= end[:, None]) & jnp.any(tokens != 0, axis=1)[:, None]
    return pooled, x * valid[..., None].astype(x.dtype)
