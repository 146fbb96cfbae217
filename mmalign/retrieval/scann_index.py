"""Approximate cosine search over an embedding gallery with ScaNN.

ScaNN offers dot product and squared L2 but no cosine, so the index L2-normalises both
the gallery and the queries and searches by dot product; the returned scores are then
cosine similarities. Large galleries use ScaNN's tree + asymmetric hashing + exact
reordering; small ones (where k-means tree training has too few points per leaf) fall
back to exact brute force, so the same code serves unit tests and full evals.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from importlib import metadata
from typing import Any

import numpy as np
import scann

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class ScannConfig:
  """Search parameters; None fields are derived from the gallery size at build time.

  num_neighbors: default k of `search`.
  num_leaves: k-means tree leaves; None -> round(sqrt(n)), never more than n.
  num_leaves_to_search: leaves probed per query (the recall/speed knob); None -> a
    quarter of the leaves, at least 1.
  training_sample_size: points used to train tree and quantiser; None -> all n.
  dims_per_block, anisotropic_quantization_threshold: asymmetric hashing settings.
  reorder: candidates rescored exactly before the final top-k (raised to k if smaller).
  brute_force_below: galleries smaller than this (or than 2 * num_leaves) are searched
    exactly instead: there brute force costs about as little as the tree, while the
    tree, with few points per leaf, loses much recall (about 0.5 recall@10 at n = 500,
    d = 32 on isotropic data).
  """
  num_neighbors: int = 10
  num_leaves: int | None = None
  num_leaves_to_search: int | None = None
  training_sample_size: int | None = None
  dims_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  reorder: int = 100
  brute_force_below: int = 1000


def _scann_version() -> str:
  try:
    return metadata.version("scann")
  except metadata.PackageNotFoundError:
    return "unknown"


def _normalised_rows(x, name: str) -> np.ndarray:
  """float32 C-contiguous [n, d] with unit rows; rejects what cosine cannot handle."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
  x = np.ascontiguousarray(x, np.float32)
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    raise ValueError(f"{name} has {int(bad.sum())} row(s) with NaN or inf "
                     f"(first at row {int(np.argmax(bad))})")
  norms = np.linalg.norm(x, axis=1, keepdims=True)  # [n, 1]
  zero = norms[:, 0] == 0
  if zero.any():
    raise ValueError(f"{name} has {int(zero.sum())} zero-norm row(s) "
                     f"(first at row {int(np.argmax(zero))}); cosine is undefined for them")
  return np.ascontiguousarray(x / norms, np.float32)


def resolved_tree_params(config: ScannConfig, count: int) -> dict[str, int] | None:
  """The tree settings used for a gallery of `count` items, or None for brute force."""
  num_leaves = config.num_leaves or max(1, round(math.sqrt(count)))
  num_leaves = min(num_leaves, count)
  if count < config.brute_force_below or count < 2 * num_leaves:
    return None
  to_search = config.num_leaves_to_search or max(1, num_leaves // 4)
  return {
      "num_leaves": num_leaves,
      "num_leaves_to_search": min(to_search, num_leaves),
      "training_sample_size": min(config.training_sample_size or count, count),
  }


class ScannIndex:
  """A built ScaNN searcher plus what is needed to check queries against it."""

  def __init__(self, searcher: Any, dim: int, count: int, config: ScannConfig):
    """Use `build` or `load`; this only wraps an existing searcher."""
    self._searcher = searcher
    self.dim = dim
    self.count = count
    self.config = config

  @property
  def is_brute_force(self) -> bool:
    return resolved_tree_params(self.config, self.count) is None

  @classmethod
  def build(cls, embeddings, config: ScannConfig = ScannConfig()) -> "ScannIndex":
    """Indexes embeddings: [n, d] (normalised here; the caller's array is not changed)."""
    gallery = _normalised_rows(embeddings, "embeddings")
    count, dim = gallery.shape
    builder = scann.scann_ops_pybind.builder(gallery, config.num_neighbors, "dot_product")
    tree = resolved_tree_params(config, count)
    if tree is None:
      builder = builder.score_brute_force()
    else:
      builder = builder.tree(**tree).score_ah(
          config.dims_per_block,
          anisotropic_quantization_threshold=config.anisotropic_quantization_threshold,
      ).reorder(config.reorder)
    return cls(builder.build(), dim, count, config)

  def search(self, queries, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by cosine for queries: [q, d] (or one [d] query, returned as [1, k]).

    Returns (scores [q, k] float32, indices [q, k] int64), best first.
    """
    k = self.config.num_neighbors if k is None else int(k)
    if not 1 <= k <= self.count:
      raise ValueError(f"k must be in [1, {self.count}] (index size), got {k}")
    queries = np.asarray(queries)
    if queries.ndim == 1:
      queries = queries[None, :]
    if queries.ndim == 2 and queries.shape[1] != self.dim:
      raise ValueError(f"query dim {queries.shape[1]} != index dim {self.dim}")
    queries = _normalised_rows(queries, "queries")
    if queries.shape[0] == 0:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    # Reordering fewer than k candidates would return fewer than k exact neighbours.
    pre_reorder = None if self.is_brute_force else max(self.config.reorder, k)
    indices, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder)
    return np.asarray(scores, np.float32), np.asarray(indices, np.int64)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the searcher and a manifest; the directory can be moved or copied later.

    The manifest is written last, so its presence marks a complete save.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    # relative_path=True: asset paths are stored relative to the directory, so a copy
    # elsewhere still loads (the default stores absolute paths).
    self._searcher.serialize(directory, relative_path=True)
    manifest = {
        "dim": self.dim,
        "count": self.count,
        "config": dataclasses.asdict(self.config),
        "scann_version": _scann_version(),
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=2)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ScannIndex":
    """Reads what `save` wrote."""
    directory = os.fspath(directory)
    manifest_path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(manifest_path):
      raise FileNotFoundError(f"no {MANIFEST} in {directory}; not a saved ScannIndex "
                              "(or the save did not finish)")
    with open(manifest_path) as f:
      manifest = json.load(f)
    searcher = scann.scann_ops_pybind.load_searcher(directory, assets_backcompat_shim=False)
    config = ScannConfig(**manifest["config"])
    return cls(searcher, int(manifest["dim"]), int(manifest["count"]), config)
