"""Recurrent text encoders (LSTM, GRU), uni- or bidirectional, over right-padded tokens.

Padding is honoured through `nn.RNN(seq_lengths=...)`: the forward final state is read at each
row's last real token, and the backward direction starts there. Lengths count non-pad tokens,
so tokens must be padded on the right only (as the tokenizer does).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from mmalign.models.registry import register_text_encoder
from mmalign.models.text_encoders import TokenEmbedding, choose, masked_mean


def last_valid(x: jnp.ndarray, lengths: jnp.ndarray) -> jnp.ndarray:
  """x [b, l, w] at position lengths - 1 → [b, w]; rows of length 0 give 0."""
  index = jnp.maximum(lengths - 1, 0)[:, None, None]  # [b, 1, 1]
  last = jnp.take_along_axis(x, index, axis=1)[:, 0]  # [b, w]
  return jnp.where((lengths > 0)[:, None], last, jnp.zeros_like(last))


def _final_states(sequence: jnp.ndarray, lengths: jnp.ndarray, width: int) -> jnp.ndarray:
  """Final hidden state(s) [b, d * width] from outputs [b, l, d * width]: forward at the last
  real token, backward at position 0; 0 for all-pad rows."""
  forward = last_valid(sequence[..., :width], lengths)
  if sequence.shape[-1] == width:
    return forward
  return jnp.concatenate([forward, sequence[:, 0, width:]], axis=-1)


class RecurrentEncoder(nn.Module):
  """Stacked RNN over token embeddings; subclasses choose the cell.

  Bidirectional layers feed `2 * width` features to the next; after the last, one shared
  `output` Dense maps `[forward, backward]` to `width` for `sequence` and for the final states
  (pooled, `pooling="final"`). Unidirectional: pooled is the final hidden state itself.
  `pooling="mean"` is the masked mean of `sequence`. Dropout acts on the embeddings and
  between layers. With `dtype=bfloat16` the carried state stays in `param_dtype`, so long
  captions do not accumulate bf16 error.
  """
  cell_type: ClassVar[type[nn.RNNCellBase]]

  vocab_size: int
  width: int = 256
  num_layers: int = 1
  bidirectional: bool = False
  pooling: str = "final"  # Or "mean".
  dropout: float = 0.0
  init_embeddings: str | None = None  # .npy [vocab_size, width] float.
  freeze_embeddings: bool = False  # Also list the table in train.frozen: AdamW decays it otherwise.
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _layer(self, index: int) -> nn.Module:
    """One layer, [b, l, in] → [b, l, d * width]; call with `seq_lengths`."""
    # Cells are named here: built in this scope, they are children of the encoder, not of the
    # nn.RNN that scans them.
    rnn = lambda name: nn.RNN(self.cell_type(  # noqa: E731
        self.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name))
    if self.bidirectional:
      return nn.Bidirectional(rnn(f"layer_{index}_forward"), rnn(f"layer_{index}_backward"))
    return rnn(f"layer_{index}")

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_mean = choose(f"{type(self).__name__} pooling", self.pooling,
                      {"final": False, "mean": True})
    mask = tokens != 0  # [b, l]
    keep = mask[..., None].astype(self.dtype)  # [b, l, 1]
    lengths = mask.sum(axis=1).astype(jnp.int32)  # [b]
    x = TokenEmbedding(self.vocab_size, self.width, self.init_embeddings, self.freeze_embeddings,
                       name="embed", **kw)(tokens)
    for i in range(self.num_layers):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      # Outputs past each row's length are scan leftovers: zero them. [b, l, d * width]
      x = self._layer(i)(x, seq_lengths=lengths).astype(self.dtype) * keep
    final = _final_states(x, lengths, self.width)  # [b, d * width]
    if self.bidirectional:
      output = nn.Dense(self.width, name="output", **kw)
      x, final = output(x) * keep, output(final)  # [b, l, width], [b, width]
    return (masked_mean(x, mask) if use_mean else final), x


@register_text_encoder("lstm")
class LSTMEncoder(RecurrentEncoder):
  """LSTM text encoder (flax `OptimizedLSTMCell`: gates i, f, g, o as in `LSTMCell`)."""
  cell_type = nn.OptimizedLSTMCell


@register_text_encoder("gru")
class GRUEncoder(RecurrentEncoder):
  """GRU text encoder (flax `GRUCell`): fewer parameters than the LSTM, often as good."""
  cell_type = nn.GRUCell
