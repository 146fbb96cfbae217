"""Cross-modal retrieval metrics where one query may have several correct gallery items.

Every query and every gallery item carries a group id (for glyphs, the code point); a
gallery item is correct for a query when their groups are equal. Scores are inner
products, so L2-normalised embeddings give cosine similarity.

The full score matrix of an eval ([queries, gallery]) may not fit in memory, so anything
that needs it runs over chunks of queries. Each chunk has the same padded shape, so the
jitted per-chunk function compiles once per eval, not once per chunk size.

Tie convention of `first_hit_ranks` (default "pessimistic"): a wrong gallery item whose
score equals the best correct score is counted as ranked ahead of it. With that choice a
collapsed encoder (every embedding equal) gets the worst rank instead of a perfect
recall@1, which the optimistic convention would report. `ties="optimistic"` gives the
other bound; the true rank under a random tie-break lies between the two.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernels import api as kernels_api

Ties = Literal["pessimistic", "optimistic"]
TIE_CONVENTIONS: tuple[str, ...] = ("pessimistic", "optimistic")

# Eval scores must not depend on the accelerator's default float32 matmul precision
# (bf16 passes on TPU, TF32 on recent GPUs), or near-ties reorder between machines.
MATMUL_PRECISION = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------
# Pure math on one dense block of scores.
# ----------------------------------------------------------------------------------------


def ranks_from_scores(scores: jnp.ndarray, correct: jnp.ndarray,
                      ties: Ties = "pessimistic") -> jnp.ndarray:
  """1-based rank of the best-scoring correct item in each row.

  scores: [q, g] float; correct: [q, g] bool, at least one True per row (a row without
  one gets a meaningless rank; the public entry points reject such rows first).
  Returns [q] int32. Only wrong items can score strictly higher than the best correct
  one, so rank = 1 + #(strictly higher) [+ #(wrong items tied with it) if pessimistic].
  """
  best = jnp.max(jnp.where(correct, scores, -jnp.inf), axis=1, keepdims=True)  # [q, 1]
  ahead = scores > best  # [q, g]
  if ties == "pessimistic":
    ahead = ahead | (~correct & (scores == best))
  elif ties != "optimistic":
    raise ValueError(f"ties must be one of {TIE_CONVENTIONS}, got {ties!r}")
  return 1 + jnp.sum(ahead, axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("k",))
def _chunk_top_k(queries: jnp.ndarray, gallery: jnp.ndarray,
                 k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """queries: [c, d], gallery: [g, d] -> (scores [c, k], indices [c, k]): the kernels'
  top-k, which `ExactIndex` uses too, so every exact answer in mmalign is the same one."""
  return kernels_api.top_k(queries, gallery, k)


@functools.partial(jax.jit, static_argnames=("ties",))
def _chunk_first_hit_ranks(queries: jnp.ndarray, query_groups: jnp.ndarray,
                           gallery: jnp.ndarray, gallery_groups: jnp.ndarray,
                           ties: Ties) -> jnp.ndarray:
  """queries: [c, d], query_groups: [c], gallery: [g, d], gallery_groups: [g] -> [c]."""
  scores = jnp.matmul(queries, gallery.T, precision=MATMUL_PRECISION)  # [c, g]
  correct = query_groups[:, None] == gallery_groups[None, :]  # [c, g]
  return ranks_from_scores(scores, correct, ties)


# ----------------------------------------------------------------------------------------
# Input checks and chunking (host side).
# ----------------------------------------------------------------------------------------


def as_embeddings(x, name: str) -> np.ndarray:
  """float32 [n, d]; NaN/inf are rejected because they compare False with everything,
  which would silently hand a broken model rank 1."""
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
  bad_rows = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
  if bad_rows:
    raise ValueError(f"{name} has {bad_rows} row(s) with NaN or inf")
  return x


def check_pair(queries: np.ndarray, gallery: np.ndarray) -> None:
  if queries.shape[1] != gallery.shape[1]:
    raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
  if gallery.shape[0] == 0:
    raise ValueError("gallery is empty")


def as_groups(groups, n: int, name: str) -> np.ndarray:
  groups = np.asarray(groups)
  if groups.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},), got {groups.shape}")
  return groups


def dense_group_ids(query_groups: np.ndarray,
                     gallery_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps any group labels (int64 code points, strings) to int32 ids 0..u-1, so they
  survive JAX's default 32-bit mode unchanged."""
  _, inverse = np.unique(np.concatenate([query_groups, gallery_groups]), return_inverse=True)
  ids = inverse.reshape(-1).astype(np.int32)
  return ids[:len(query_groups)], ids[len(query_groups):]


def require_a_match_per_query(query_groups: np.ndarray, gallery_groups: np.ndarray) -> None:
  """A query whose group is absent from the gallery has no rank; averaging it in as a
  miss or dropping it silently would both misreport the model."""
  missing = ~np.isin(query_groups, gallery_groups)
  num_missing = int(np.count_nonzero(missing))
  if num_missing:
    examples = np.unique(query_groups[missing])[:5].tolist()
    raise ValueError(
        f"{num_missing} of {len(query_groups)} queries have no correct item in the "
        f"gallery (groups e.g. {examples}); remove them or add their gallery items")


def check_chunk_size(chunk_size: int) -> None:
  if int(chunk_size) != chunk_size or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def _map_query_chunks(fn: Callable, per_query: Sequence[np.ndarray], chunk_size: int):
  """Calls fn(*chunk_arrays) on row chunks of every array in per_query (all [q, ...]).

  Every call sees the same padded leading size, min(chunk_size, q), so a jitted fn
  compiles once. Returns fn's outputs (a tuple of arrays or one array), padding removed,
  concatenated over chunks, as numpy.
  """
  num = per_query[0].shape[0]
  size = min(chunk_size, num)
  pending = []
  for start in range(0, num, size):
    stop = min(start + size, num)
    pad = size - (stop - start)
    chunk = [np.pad(a[start:stop], [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in per_query]
    pending.append((fn(*chunk), stop - start))  # Dispatch all chunks before waiting.
  outputs = [jax.tree.map(lambda r, n=n: np.asarray(r)[:n], out) for out, n in pending]
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


# ----------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------


def exact_top_k(queries, gallery, k: int,
                chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Exact inner-product top-k: the reference that approximate indexes are measured by.

  queries: [q, d], gallery: [g, d], 1 <= k <= g. At most [chunk_size, g] scores exist
  at once. Returns (scores [q, k] float32, indices [q, k] int32), best first; equal
  scores are ordered by lower gallery index first (jax.lax.top_k's rule).
  """
  queries = as_embeddings(queries, "queries")
  gallery = as_embeddings(gallery, "gallery")
  check_pair(queries, gallery)
  check_chunk_size(chunk_size)
  if not 1 <= k <= gallery.shape[0]:
    raise ValueError(f"k must be in [1, {gallery.shape[0]}] (gallery size), got {k}")
  if queries.shape[0] == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  gallery_dev = jnp.asarray(gallery)  # Moved to the device once, not per chunk.
  scores, indices = _map_query_chunks(
      lambda q: _chunk_top_k(q, gallery_dev, k=k), [queries], chunk_size)
  return scores.astype(np.float32), indices.astype(np.int32)


def first_hit_ranks(queries, query_groups, gallery, gallery_groups,
                    chunk_size: int = 4096, ties: Ties = "pessimistic") -> np.ndarray:
  """1-based rank of the first correct gallery item for every query.

  queries: [q, d], query_groups: [q], gallery: [g, d], gallery_groups: [g]; groups may
  be any labels numpy can sort. `ties` is explained in the module docstring. Raises
  ValueError when some query has no correct item in the gallery. Returns [q] int32.
  """
  queries = as_embeddings(queries, "queries")
  gallery = as_embeddings(gallery, "gallery")
  check_pair(queries, gallery)
  check_chunk_size(chunk_size)
  if ties not in TIE_CONVENTIONS:
    raise ValueError(f"ties must be one of {TIE_CONVENTIONS}, got {ties!r}")
  query_groups = as_groups(query_groups, queries.shape[0], "query_groups")
  gallery_groups = as_groups(gallery_groups, gallery.shape[0], "gallery_groups")
  require_a_match_per_query(query_groups, gallery_groups)
  if queries.shape[0] == 0:
    return np.zeros((0,), np.int32)
  query_ids, gallery_ids = dense_group_ids(query_groups, gallery_groups)
  gallery_dev, gallery_ids_dev = jnp.asarray(gallery), jnp.asarray(gallery_ids)
  ranks = _map_query_chunks(
      lambda q, qg: _chunk_first_hit_ranks(q, qg, gallery_dev, gallery_ids_dev, ties=ties),
      [queries, query_ids], chunk_size)
  return ranks.astype(np.int32)


def retrieval_metrics(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Summary of first-hit ranks ([q], 1-based).

  Returns {"recall@k": fraction in [0, 1] of ranks <= k for each k, "median_rank",
  "mean_rank", "num_queries"}; plain Python numbers, ready for JSON.
  """
  ranks = np.asarray(ranks)
  if ranks.ndim != 1 or ranks.size == 0:
    raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
  if np.any(ranks < 1):
    raise ValueError("ranks are 1-based; got a value below 1")
  metrics: dict[str, float] = {f"recall@{k}": float(np.mean(ranks <= k)) for k in ks}
  metrics["median_rank"] = float(np.median(ranks))
  metrics["mean_rank"] = float(np.mean(ranks))
  metrics["num_queries"] = int(ranks.size)
  return metrics


def chance_recall_at_k(query_groups, gallery_groups, k: int) -> float:
  """Expected recall@k of a uniformly random gallery ordering, averaged over queries.

  With g gallery items of which m are correct for a query, the top k miss all of them
  with probability C(g-m, k) / C(g, k) (hypergeometric). Reports print this beside the
  measured recall, because with many correct items per group chance is far from k/g.
  """
  query_groups = np.asarray(query_groups)
  gallery_groups = np.asarray(gallery_groups)
  if query_groups.ndim != 1 or gallery_groups.ndim != 1 or gallery_groups.size == 0:
    raise ValueError("query_groups and gallery_groups must be 1-D, the gallery non-empty")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  require_a_match_per_query(query_groups, gallery_groups)
  if query_groups.size == 0:
    raise ValueError("query_groups is empty")
  values, counts = np.unique(gallery_groups, return_counts=True)
  num_correct = counts[np.searchsorted(values, query_groups)]  # [q]
  unique_m, inverse = np.unique(num_correct, return_inverse=True)
  miss = _probability_of_no_hit(gallery_groups.size, unique_m, k)  # [u]
  return float(np.mean(1.0 - miss[inverse.reshape(-1)]))


def _probability_of_no_hit(g: int, m: np.ndarray, k: int) -> np.ndarray:
  """C(g-m, k) / C(g, k) = prod_{i<k} (g-m-i) / (g-i), for m: [u] -> [u] float64.

  The product form avoids huge binomials; a factor that reaches zero (k > g-m) zeroes it.
  """
  k = min(k, g)
  i = np.arange(k, dtype=np.float64)  # [k]
  factors = (g - m[:, None].astype(np.float64) - i) / (g - i)  # [u, k]
  return np.prod(np.clip(factors, 0.0, None), axis=1)


def recall_vs_exact(approx_indices, exact_indices, *, queries=None, gallery=None,
                    atol: float = 1e-5) -> float:
  """ANN recall: the share of the k true neighbours an approximate search found.

  approx_indices, exact_indices: [q, k] integer gallery ids (missing slots: -1, never a
  hit; a repeated id in an approximate row counts once, so padding cannot inflate it).
  Without vectors this is the standard |approx ∩ exact| / k. With queries [q, d] and
  gallery [n, d], an approximate id whose true score is within atol of the k-th true
  score also counts (at most k per row): trained embeddings hold exact duplicates
  (identical images, repeated captions), and which of two tied items an exact search
  returns is arbitrary, so the set definition would charge a correct search for a tie.
  """
  approx = np.asarray(approx_indices).astype(np.int64)
  exact = np.asarray(exact_indices).astype(np.int64)
  if approx.shape != exact.shape or approx.ndim != 2:
    raise ValueError(f"need two [q, k] arrays of equal shape, got {approx.shape} "
                     f"and {exact.shape}")
  num, k = exact.shape
  if num == 0 or k == 0:
    raise ValueError(f"need at least one query and k >= 1, got shape {exact.shape}")
  ordered = np.sort(approx, axis=1)
  repeated = np.zeros_like(ordered, dtype=bool)
  repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
  valid = (ordered >= 0) & ~repeated  # [q, k]
  # One integer key per (row, id) pair turns the per-row set intersection into one
  # vectorised np.isin over all rows.
  low = min(ordered.min(), exact.min())
  span = max(ordered.max(), exact.max()) - low + 1
  rows = np.arange(num, dtype=np.int64)[:, None] * span
  hits = valid & np.isin(rows + ordered - low, rows + exact - low)
  if (queries is None) != (gallery is None):
    raise ValueError("tie-aware recall needs both queries and gallery (or neither)")
  if queries is not None:
    queries = np.asarray(queries, np.float64)  # [q, d]
    gallery = np.asarray(gallery, np.float64)  # [n, d]
    if queries.shape[0] != num:
      raise ValueError(f"queries has {queries.shape[0]} rows, the id arrays {num}")
    kth = np.einsum("qd,qkd->qk", queries, gallery[exact]).min(axis=1)  # [q]
    found = np.einsum("qd,qkd->qk", queries, gallery[np.where(valid, ordered, 0)])
    hits |= valid & (found >= kth[:, None] - atol)
  return float(np.minimum(hits.sum(axis=1), k).sum() / (num * k))
