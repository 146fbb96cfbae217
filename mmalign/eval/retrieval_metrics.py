"""Cross-modal retrieval metrics where one query may have several correct gallery items.

Every query and gallery item carries a group id (for glyphs, the code point); an item is
correct for a query of the same group. Scores are inner products (cosine for unit rows),
computed over query chunks padded to one shape, so the [queries, gallery] matrix never
exists whole and the jitted chunk function compiles once.

Ties in `first_hit_ranks` (default "pessimistic"): a wrong item scoring equal to the best
correct one ranks ahead of it, so a collapsed encoder (all embeddings equal) gets the worst
rank, not a perfect recall@1; "optimistic" gives the other bound."""

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


def ranks_from_scores(scores: jnp.ndarray, correct: jnp.ndarray,
                      ties: Ties = "pessimistic") -> jnp.ndarray:
  """1-based rank [q] int32 of the best-scoring correct item in each row. scores: [q, g]
  float; correct: [q, g] bool, at least one True per row (else the rank is meaningless)."""
  best = jnp.max(jnp.where(correct, scores, -jnp.inf), axis=1, keepdims=True)  # [q, 1]
  ahead = scores > best  # [q, g]
  if ties == "pessimistic":
    ahead = ahead | (~correct & (scores == best))
  elif ties != "optimistic":
    raise ValueError(f"ties must be one of {TIE_CONVENTIONS}, got {ties!r}")
  return 1 + jnp.sum(ahead, axis=1, dtype=jnp.int32)


@functools.lru_cache(maxsize=32)
def top_k_fn(k: int, impl: str = "auto", block_size: int | None = None):
  """jit of kernels.api.top_k for one (k, impl, block), compiled once per query shape: used
  by `exact_top_k` and `ExactIndex`, so every exact answer in mmalign is the same one."""
  kwargs = {} if block_size is None else {"block_size": block_size}
  return jax.jit(lambda queries, keys: kernels_api.top_k(queries, keys, k, impl=impl, **kwargs))


@jax.jit
def chunk_scores(queries: jnp.ndarray, gallery: jnp.ndarray) -> jnp.ndarray:
  """[c, g] inner products of queries [c, d] and gallery [g, d]; every metric ranks by these."""
  return jnp.matmul(queries, gallery.T, precision=MATMUL_PRECISION)


@functools.partial(jax.jit, static_argnames=("ties",))
def _chunk_first_hit_ranks(queries: jnp.ndarray, query_groups: jnp.ndarray,
                           gallery: jnp.ndarray, gallery_groups: jnp.ndarray,
                           ties: Ties) -> jnp.ndarray:
  """queries: [c, d], query_groups: [c], gallery: [g, d], gallery_groups: [g] -> [c]."""
  scores = chunk_scores(queries, gallery)  # [c, g]
  correct = query_groups[:, None] == gallery_groups[None, :]  # [c, g]
  return ranks_from_scores(scores, correct, ties)


def as_query_gallery(queries, gallery, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(queries [q, d], gallery [g, d]) as float32 of one width, the gallery non-empty;
  chunk_size must be a positive integer. NaN/inf rows are rejected because they compare
  False with everything, which would silently hand a broken model rank 1."""
  checked = []
  for name, x in (("queries", queries), ("gallery", gallery)):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
      raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
    bad_rows = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
    if bad_rows:
      raise ValueError(f"{name} has {bad_rows} row(s) with NaN or inf")
    checked.append(x)
  queries, gallery = checked
  if queries.shape[1] != gallery.shape[1]:
    raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
  if gallery.shape[0] == 0:
    raise ValueError("gallery is empty")
  if int(chunk_size) != chunk_size or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
  return queries, gallery


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


def grouped_inputs(queries, query_groups, gallery, gallery_groups, chunk_size: int):
  """(queries [q, d], gallery [g, d], query ids [q], gallery ids [g]): the embeddings as
  `as_query_gallery` checks them, any group labels (code points, strings) as int32 ids
  0..u-1, which survive JAX's default 32-bit mode. ValueError if a query has no match."""
  queries, gallery = as_query_gallery(queries, gallery, chunk_size)
  query_groups, gallery_groups = np.asarray(query_groups), np.asarray(gallery_groups)
  for name, groups, n in (("query_groups", query_groups, len(queries)),
                          ("gallery_groups", gallery_groups, len(gallery))):
    if groups.shape != (n,):
      raise ValueError(f"{name} must have shape ({n},), got {groups.shape}")
  require_a_match_per_query(query_groups, gallery_groups)
  _, inverse = np.unique(np.concatenate([query_groups, gallery_groups]), return_inverse=True)
  ids = inverse.reshape(-1).astype(np.int32)
  return queries, gallery, ids[:len(query_groups)], ids[len(query_groups):]


def _map_query_chunks(fn: Callable, per_query: Sequence[np.ndarray], chunk_size: int):
  """fn's outputs (an array or tuple) on padded row chunks of every per_query array
  ([q, ...] each), unpadded and concatenated as numpy."""
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


def exact_top_k(queries, gallery, k: int,
                chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Exact inner-product top-k: the reference that approximate indexes are measured by.
  queries: [q, d], gallery: [g, d], 1 <= k <= g. Returns (scores [q, k] float32,
  indices [q, k] int32), best first, equal scores by lower gallery index first."""
  queries, gallery = as_query_gallery(queries, gallery, chunk_size)
  if not 1 <= k <= gallery.shape[0]:
    raise ValueError(f"k must be in [1, {gallery.shape[0]}] (gallery size), got {k}")
  if queries.shape[0] == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  gallery_dev = jnp.asarray(gallery)  # Moved to the device once, not per chunk.
  scores, indices = _map_query_chunks(
      lambda q: top_k_fn(k)(q, gallery_dev), [queries], chunk_size)
  return scores.astype(np.float32), indices.astype(np.int32)


def first_hit_ranks(queries, query_groups, gallery, gallery_groups,
                    chunk_size: int = 4096, ties: Ties = "pessimistic") -> np.ndarray:
  """1-based rank [q] int32 of the first correct gallery item for every query.

  queries: [q, d], query_groups: [q], gallery: [g, d], gallery_groups: [g]; groups may be
  any labels numpy can sort. `ties`: see the module docstring. Raises ValueError when some
  query has no correct item in the gallery."""
  if ties not in TIE_CONVENTIONS:
    raise ValueError(f"ties must be one of {TIE_CONVENTIONS}, got {ties!r}")
  queries, gallery, query_ids, gallery_ids = grouped_inputs(
      queries, query_groups, gallery, gallery_groups, chunk_size)
  if queries.shape[0] == 0:
    return np.zeros((0,), np.int32)
  gallery_dev, gallery_ids_dev = jnp.asarray(gallery), jnp.asarray(gallery_ids)
  ranks = _map_query_chunks(
      lambda q, qg: _chunk_first_hit_ranks(q, qg, gallery_dev, gallery_ids_dev, ties=ties),
      [queries, query_ids], chunk_size)
  return ranks.astype(np.int32)


def retrieval_metrics(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Summary of first-hit ranks ([q], 1-based): {"recall@k": fraction of ranks <= k for
  each k, "median_rank", "mean_rank", "num_queries"}, plain Python numbers for JSON."""
  ranks = np.asarray(ranks)
  if ranks.ndim != 1 or ranks.size == 0:
    raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
  if np.any(ranks < 1):
    raise ValueError("ranks are 1-based; got a value below 1")
  return {**{f"recall@{k}": float(np.mean(ranks <= k)) for k in ks},
          "median_rank": float(np.median(ranks)), "mean_rank": float(np.mean(ranks)),
          "num_queries": int(ranks.size)}


def chance_recall_at_k(query_groups, gallery_groups, k: int) -> float:
  """Expected recall@k of a uniformly random gallery ordering, averaged over queries.
  Hypergeometric: with m of g items correct, the top k miss all with probability
  C(g-m, k) / C(g, k). Reported beside recall because with large groups chance is far from k/g."""
  query_groups, gallery_groups = np.asarray(query_groups), np.asarray(gallery_groups)
  if query_groups.ndim != 1 or gallery_groups.ndim != 1 or gallery_groups.size == 0:
    raise ValueError("query_groups and gallery_groups must be 1-D, the gallery non-empty")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  require_a_match_per_query(query_groups, gallery_groups)
  if query_groups.size == 0:
    raise ValueError("query_groups is empty")
  values, counts = np.unique(gallery_groups, return_counts=True)
  num_correct = counts[np.searchsorted(values, query_groups)]  # [q]
  unique_m, inverse = np.unique(num_correct, return_inverse=True)  # [u]
  g = gallery_groups.size
  i = np.arange(min(k, g), dtype=np.float64)  # [k]
  # P(miss) as a product of [u, k] factors: no huge binomials.
  factors = (g - unique_m[:, None].astype(np.float64) - i) / (g - i)
  miss = np.prod(np.clip(factors, 0.0, None), axis=1)  # [u]
  return float(np.mean(1.0 - miss[inverse.reshape(-1)]))


def recall_vs_exact(approx_indices, exact_indices, *, queries=None, gallery=None,
                    atol: float = 1e-5) -> float:
  """ANN recall: the share of the k true neighbours an approximate search found.

  approx_indices, exact_indices: [q, k] integer gallery ids (-1 = missing, never a hit; a
  repeated approximate id counts once). Without vectors: |approx ∩ exact| / k. With queries
  [q, d] and gallery [n, d], an id scoring within atol of the k-th true score also counts
  (at most k per row): embeddings hold exact duplicates, and which tied item an exact
  search returns is arbitrary."""
  approx, exact = (np.asarray(x).astype(np.int64) for x in (approx_indices, exact_indices))
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
  # One integer key per (row, id) makes the per-row intersection a single np.isin.
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
