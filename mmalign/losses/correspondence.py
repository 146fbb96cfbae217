"""Correspondence-matrix regression: fit the batch's similarity matrix to a target A.

Instead of ranking the right image above the others (InfoNCE, sigmoid), this loss
asks every cosine t_i·i_j to equal a given A_ij, so the whole [n, n] matrix is a
regression target: 1 where text i and image j correspond, 0 elsewhere (orthogonal,
not merely less similar). The targets:

  "identity"  A = I: pair i's text matches pair i's image only (paired data).
  "labels"    A_ij = 1 when labels_i == labels_j: every image of the caption's group
              is a correct answer, as in retrieval eval. The trainer draws one example
              per group per batch, so there this equals "identity"; it differs when a
              batch holds several examples of one group.

`soft=True` divides each row of A by its sum, so a caption with k correct images asks
each of them for cosine 1/k, a fixed budget per caption; with hard targets (the
default) it asks all k for cosine 1, which pulls those images onto one point. With
"identity" every row already sums to 1 and `soft` changes nothing.

The loss goes through `kernels.api.correspondence` (the kernel's plain sum over the
n·n entries) and divides by n, the SigLIP convention of `kernels.reference.sigmoid_loss`:
the per-caption sum of n squared errors, averaged over captions.
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

  labels: [n] int (group of each pair), needed only for target="labels". Every row of
  A has at least its diagonal 1, so the soft row normalisation never divides by zero.
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

  text_emb, image_emb: [n, d], unit rows (the dual encoder's output), so t_i·i_j is a
  cosine in [−1, 1] and A is defined on that raw cosine (1: same direction, 0:
  orthogonal), as in the kernel. `scale` (and the sigmoid bias) are therefore unused and
  the model's log-scale gets no gradient from this loss; retrieval ranks do not depend
  on it. labels: [n] int or None, used by target="labels" only.
  `impl` picks the kernel. The correspondence kernels have nothing to tile (the
  expanded square needs only A·I and two [d, d] Gram matrices), so this loss takes
  no block sizes.
  """
  del scale, unused
  n = text_emb.shape[0]
  if image_emb.shape[0] != n:
    raise ValueError(f"correspondence pairs text i with image i: got {n} texts and "
                     f"{image_emb.shape[0]} images")
  a = correspondence_target(n, labels, target=target, soft=soft)  # [n, n]
  return kernels_api.correspondence(text_emb, image_emb, a, impl=impl) / n
