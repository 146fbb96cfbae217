"""Correspondence-matrix regression: fit the batch's similarity matrix to a target A.

Instead of ranking the right image above the others, every cosine t_i·i_j must equal A_ij:
1 where text i and image j correspond, 0 (orthogonal, not merely less similar) elsewhere.

  "identity"  A = I (paired data).
  "labels"    A_ij = 1 when labels_i == labels_j, as in retrieval eval; equals "identity"
              unless a batch holds several examples of one group.

`soft=True` divides each row of A by its sum, so a caption with k correct images asks each
for cosine 1/k rather than pulling all k onto one point; with "identity" it changes nothing.
The sum over n·n entries is divided by n (SigLIP's convention): per-caption sum, averaged.
"""

from __future__ import annotations

import jax.numpy as jnp

from kernels import api as kernels_api
from mmalign.errors import UsageError
from mmalign.losses.contrastive import LOSSES

TARGETS = ("identity", "labels")


def correspondence_target(n: int, labels: jnp.ndarray | None = None, *,
                          target: str = "identity", soft: bool = False) -> jnp.ndarray:
  """The target A: [n, n] float32 for a batch of n (text, image) pairs.

  labels: [n] int (group of each pair), needed only for target="labels" (ValueError if
  missing or misshapen; UsageError for an unknown target). Soft rows never divide by zero.
  """
  if target == "identity":
    return jnp.eye(n, dtype=jnp.float32)
  if target != "labels":
    raise UsageError(f"unknown correspondence target {target!r} (loss.kwargs.target); "
                     f"allowed: {', '.join(TARGETS)}")
  if labels is None:
    raise ValueError("target='labels' needs labels=[n] (the batch's group ids); the "
                     "objective passes them, direct callers must too")
  labels = jnp.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape [n]=({n},); got {labels.shape}")
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)  # [n, n]
  if soft:
    same = same / jnp.sum(same, axis=1, keepdims=True)
  return same


@LOSSES.register("correspondence")
def correspondence(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray, *,
                   labels: jnp.ndarray | None = None, target: str = "identity",
                   soft: bool = False, impl: str = "auto", **unused) -> jnp.ndarray:
  """Σ_ij (A_ij − t_i·i_j)² / n, A from `correspondence_target(target, soft)`.

  text_emb, image_emb: [n, d], unit rows: A is defined on the raw cosine, so `scale` and
  the bias are unused (no gradient). labels: [n] int or None, for target="labels". `impl`
  picks the kernel (nothing to tile). Raises ValueError when the two batch sizes differ.
  """
  del scale, unused
  n = text_emb.shape[0]
  if image_emb.shape[0] != n:
    raise ValueError(f"correspondence pairs text i with image i: got {n} texts and "
                     f"{image_emb.shape[0]} images")
  a = correspondence_target(n, labels, target=target, soft=soft)  # [n, n]
  return kernels_api.correspondence(text_emb, image_emb, a, impl=impl) / n
