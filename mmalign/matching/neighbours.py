"""Greedy matchers: each row picks its best column, optionally confirmed by that column.

Both are jit-able, one argmax per axis; ties go to the lowest index (deterministic).
"""

from __future__ import annotations

import jax.numpy as jnp

from mmalign.errors import UsageError

UNMATCHED = -1


def check_scores(scores: jnp.ndarray) -> None:
  """Raises early on shapes that would make argmax fail deep inside XLA."""
  if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
    raise UsageError(f"scores must be a non-empty [n, m] matrix, got shape {scores.shape}")


def nearest_neighbour(scores: jnp.ndarray) -> jnp.ndarray:
  """Best column of every row; many rows may share one column (not one-to-one)."""
  scores = jnp.asarray(scores)
  check_scores(scores)
  return jnp.argmax(scores, axis=1).astype(jnp.int32)  # [n]


def mutual_nearest_neighbours(scores: jnp.ndarray) -> jnp.ndarray:
  """Row i keeps its best column j only if i is also j's best row, else -1.

  One-to-one by construction: a cheap, high-precision, lower-recall alternative to exact
  assignment.
  """
  scores = jnp.asarray(scores)
  check_scores(scores)
  best_col = jnp.argmax(scores, axis=1)  # [n]
  best_row = jnp.argmax(scores, axis=0)  # [m]
  rows = jnp.arange(scores.shape[0])
  return jnp.where(best_row[best_col] == rows, best_col, UNMATCHED).astype(jnp.int32)  # [n]
