"""Independent references for the retrieval tests: float64 numpy brute force and data."""

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def numpy_top_k(queries, gallery, k, ids=None):
  """Cosine top-k by a full float64 argsort: (scores [q, k'], ids [q, k']), k' = min(k, n).

  ids: [n] item id of each gallery row (default the row number).
  """
  queries = np.asarray(queries, np.float64)
  gallery = np.asarray(gallery, np.float64)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
  scores = queries @ gallery.T  # [q, n]
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  ids = np.arange(len(gallery)) if ids is None else np.asarray(ids)
  return np.take_along_axis(scores, order, 1), ids[order]


def cosine(queries, gallery) -> np.ndarray:
  """[q, n] float64 cosine similarities."""
  queries = np.asarray(queries, np.float64)
  gallery = np.asarray(gallery, np.float64)
  return ((queries / np.linalg.norm(queries, axis=1, keepdims=True))
          @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T)


def clustered(seed: int, num: int, num_queries: int, dim: int = 32, num_clusters: int = 50):
  """Unit vectors around random centres, like embeddings of a few thousand classes."""
  rng = np.random.default_rng(seed)
  centres = unit_rows(rng.normal(size=(num_clusters, dim)))
  noise = 0.5 / np.sqrt(dim)
  gallery = centres[rng.integers(0, num_clusters, num)] + noise * rng.normal(size=(num, dim))
  queries = (centres[rng.integers(0, num_clusters, num_queries)]
             + noise * rng.normal(size=(num_queries, dim)))
  return unit_rows(gallery), unit_rows(queries)


def recall(found_ids, exact_ids) -> float:
  """|found ∩ exact| / |exact| per row, averaged: an independent set-based count."""
  hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found_ids, exact_ids)]
  return float(np.sum(hits) / np.asarray(exact_ids).size)
