"""Plain-jnp oracles for the kernels: simple, obviously correct, O(N·M) memory.

Every tiled or Pallas kernel in this package is tested against these. They
materialise the full `[N, M]` logits, so use them for tests and small batches,
not for training at scale (see `xla_chunked.py`).

Shared conventions:
  text: [N, d], image: [M, d]; any float dtype (bfloat16 included). Inputs are
    cast to float32 before the matmul, so accumulation is always float32.
  scale: scalar array, the multiplier s itself (the model learns log s).
  bias: scalar array (sigmoid loss only).
  positives: optional [N] int; positives[i] is the image that caption i
    describes. None means the diagonal and requires N == M.
  Losses return float32 scalars and never normalise their inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _logits(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  """s·T·Iᵀ in float32: [N, M]."""
  text = text.astype(jnp.float32)
  image = image.astype(jnp.float32)
  return jnp.asarray(scale, jnp.float32) * (text @ image.T)


def positive_mask(positives: jnp.ndarray | None, n: int, m: int) -> jnp.ndarray:
  """[N, M] bool, True at (i, pos(i)); the diagonal when `positives` is None."""
  if positives is None:
    if n != m:
      raise ValueError(f"positives=None means the diagonal, which needs N == M; got N={n}, M={m}")
    return jnp.eye(n, dtype=bool)
  positives = jnp.asarray(positives)
  if positives.shape != (n,):
    raise ValueError(f"positives must have shape [N]=({n},); got {positives.shape}")
  return positives[:, None] == jnp.arange(m)[None, :]


def infonce_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 positives: jnp.ndarray | None = None) -> jnp.ndarray:
  """Symmetric CLIP InfoNCE: ½ (mean row CE + mean column CE) on l = s·T·Iᵀ.

  Rows (text → image), one positive each:
    CE_i = logsumexp_j l_ij − l_{i,pos(i)}.
  Columns (image → text): several captions may share image j, so with
  P_j = {i : pos(i) = j} the column term treats all of them as correct:
    CE_j = logsumexp_i l_ij − logsumexp_{i∈P_j} l_ij,
  which is the standard CE when |P_j| = 1 (e.g. the diagonal). Images that no
  caption points at (P_j empty) have no defined target and are left out of the
  column mean; the row mean always averages all N rows.

  text: [N, d]; image: [M, d]; scale: scalar; positives: [N] int or None.
  Returns a float32 scalar.
  """
  n, m = text.shape[0], image.shape[0]
  logits = _logits(text, image, scale)  # [N, M]
  mask = positive_mask(positives, n, m)  # [N, M]
  row_ce = jax.nn.logsumexp(logits, axis=1) - jnp.sum(jnp.where(mask, logits, 0.0), axis=1)
  column_lse = jax.nn.logsumexp(logits, axis=0)  # [M]
  masked = jnp.where(mask, logits, -jnp.inf)
  has_positive = jnp.any(mask, axis=0)  # [M]
  # Empty columns would give lse = −inf; feed them zeros so gradients stay finite.
  positive_lse = jax.nn.logsumexp(jnp.where(has_positive[None, :], masked, 0.0), axis=0)
  column_ce = jnp.where(has_positive, column_lse - positive_lse, 0.0)
  column_mean = column_ce.sum() / jnp.maximum(has_positive.sum(), 1)
  return 0.5 * (row_ce.mean() + column_mean)


def sigmoid_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 bias: jnp.ndarray, positives: jnp.ndarray | None = None) -> jnp.ndarray:
  """SigLIP: −Σ_ij log σ(z_ij (s t_i·i_j + b)) / N, z = +1 on matched pairs, −1 elsewhere.

  Matched pairs are the diagonal, or (i, positives[i]). Dividing by N (not N·M)
  follows the SigLIP paper, so the loss grows with the number of negatives.
  Returns a float32 scalar.
  """
  n, m = text.shape[0], image.shape[0]
  logits = _logits(text, image, scale) + jnp.asarray(bias, jnp.float32)  # [N, M]
  signs = jnp.where(positive_mask(positives, n, m), 1.0, -1.0)
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n


def correspondence_loss(text: jnp.ndarray, image: jnp.ndarray,
                        target: jnp.ndarray) -> jnp.ndarray:
  """Σ_ij (A_ij − t_i·i_j)²: regress the similarity matrix onto a target A: [N, M].

  The design document's correspondence-matrix loss; no scale, no bias, a plain
  sum (not a mean) of squared errors. Returns a float32 scalar.
  """
  similarity = _logits(text, image, 1.0)  # [N, M]
  return jnp.sum(jnp.square(target.astype(jnp.float32) - similarity))


def top_k(queries: jnp.ndarray, keys: jnp.ndarray, k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The k keys with the largest inner product with each query.

  queries: [q, d]; keys: [g, d]; requires k <= g.
  Returns (values [q, k] float32, indices [q, k] int32), best first; ties go to
  the lower index (as `lax.top_k`).
  """
  if not 0 < k <= keys.shape[0]:
    raise ValueError(f"k must be in [1, {keys.shape[0]}] (the number of keys); got {k}")
  scores = _logits(queries, keys, 1.0)  # [q, g]
  values, indices = jax.lax.top_k(scores, k)
  return values, indices.astype(jnp.int32)
