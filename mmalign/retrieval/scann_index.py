"""Approximate cosine search (dot product of unit rows) with ScaNN: a tree + asymmetric
hashing (AH) + exact reordering, or brute force for small galleries (see `ScannConfig`).

Updates do not retrain the tree or the AH codebooks, so after large changes rebuild (or
`tune`). Loading never calls `scann_ops_pybind.load_searcher`, which unpickles
`scann_docids.pkl`: ids live in `ids.npy`, and the searcher is rebuilt from the
checksummed `scann_assets.pbtxt`."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import numpy as np
import scann
from google.protobuf import text_format
from scann.proto import partitioning_pb2, scann_pb2

from mmalign.retrieval.base import SEARCHERS, Index
from mmalign.retrieval.manifest import IndexFileError, Provenance

_ASSETS = "scann_assets.pbtxt"


@dataclasses.dataclass(frozen=True)
class ScannConfig:
  """Search parameters; None fields are derived from the gallery size n at build time
  (defaults measured in benchmarks/results/retrieval.md; `tune` for your data).

  num_neighbors: default k of `search`. num_leaves: None -> round(sqrt(n)), at most n.
  num_leaves_to_search: leaves probed per query (the recall/speed knob); None ->
    `leaves_to_search_fraction` of the leaves, at least `min_leaves_to_search`.
  training_sample_size: None -> all n up to `max_training_sample` (as good, much faster).
  reorder: candidates rescored exactly before the final top-k (raised to k if smaller).
  brute_force_below: galleries smaller than this (or than 2 * num_leaves) are searched
    exactly: a tree with few points per leaf loses much recall."""
  num_neighbors: int = 10
  num_leaves: int | None = None
  num_leaves_to_search: int | None = None
  leaves_to_search_fraction: float = 0.05
  min_leaves_to_search: int = 16
  training_sample_size: int | None = None
  max_training_sample: int = 100_000
  dims_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  reorder: int = 100
  brute_force_below: int = 1000


def resolved_tree_params(config: ScannConfig, count: int) -> dict[str, int] | None:
  """The tree settings used for a gallery of `count` items, or None for brute force."""
  num_leaves = min(config.num_leaves or max(1, round(math.sqrt(count))), max(count, 1))
  if count < config.brute_force_below or count < 2 * num_leaves:
    return None
  to_search = config.num_leaves_to_search or max(
      config.min_leaves_to_search, round(num_leaves * config.leaves_to_search_fraction))
  sample = config.training_sample_size or min(count, config.max_training_sample)
  return {"num_leaves": num_leaves, "num_leaves_to_search": min(to_search, num_leaves),
          "training_sample_size": min(sample, count)}


def seeded_tree_config(config_text: str) -> str:
  """`config_text` with the k-means tree seeded by k-means++ instead of random centres.

  Why: ScaNN's random tree initialisation is not seeded, so two builds over the same
  vectors gave different trees and answers; k-means++ (and the seeded training sample)
  makes a build a function of its vectors and config, in any process."""
  proto = text_format.Parse(config_text, scann_pb2.ScannConfig())
  if proto.HasField("partitioning"):
    proto.partitioning.single_machine_center_initialization = (
        partitioning_pb2.PartitioningConfig.DEFAULT_KMEANS_PLUS_PLUS)
  return text_format.MessageToString(proto)


@SEARCHERS.register("scann")
class ScannIndex(Index):
  """A ScaNN searcher (tree + AH + reorder, or brute force) behind the `Index` API."""

  name = "scann"
  config_class = ScannConfig

  def __init__(self, searcher: Any, dim: int, ids: np.ndarray, params: dict[str, Any],
               provenance: Provenance = Provenance(), tuning: dict | None = None):
    super().__init__(dim, ids, params, provenance, tuning)
    self._searcher = searcher

  @property
  def is_brute_force(self) -> bool:
    """Fixed at build time: updates never switch a brute-force index to a tree."""
    return self.params["mode"] == "brute_force"

  def set_search_params(self, *, num_leaves_to_search: int | None = None,
                        reorder: int | None = None) -> None:
    """Changes the query-time knobs (no rebuild); `tune` uses this."""
    if self.is_brute_force:
      return
    if num_leaves_to_search is not None:
      leaves = int(min(max(1, num_leaves_to_search), self.params["tree"]["num_leaves"]))
      self.params["tree"]["num_leaves_to_search"] = leaves
      self.params["config"]["num_leaves_to_search"] = leaves
    if reorder is not None:
      self.params["reorder"] = self.params["config"]["reorder"] = int(max(1, reorder))

  @classmethod
  def _backend_build(cls, gallery, ids, config, provenance):
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
    searcher = scann.scann_ops_pybind.create_searcher(
        gallery, seeded_tree_config(builder.create_config()))
    params = {"mode": "brute_force" if tree is None else "tree", "tree": tree,
              "reorder": None if tree is None else config.reorder,
              "num_neighbors": config.num_neighbors, "config": dataclasses.asdict(config)}
    return cls(searcher, dim, ids, params, provenance)

  def _query_knobs(self, k: int) -> tuple[int, int]:
    """(pre_reorder, leaves_to_search) for the raw searcher; -1 = the searcher's own."""
    if self.is_brute_force:
      return -1, -1
    # Reordering fewer than k candidates would return fewer than k exact neighbours.
    return max(self.params["reorder"], k), self.params["tree"]["num_leaves_to_search"]

  def _backend_search(self, queries, k):
    pre_reorder, leaves = self._query_knobs(k)
    positions, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder,
        leaves_to_search=leaves)
    return scores, positions

  def _backend_search_one(self, query, k):
    pre_reorder, leaves = self._query_knobs(k)
    # Returns only the results it has (no padding); `finish` pads to k.
    positions, scores = self._searcher.searcher.search(query, k, pre_reorder, leaves)
    return np.asarray(scores)[None], np.asarray(positions)[None]

  def _backend_upsert(self, slots, rows):
    self._searcher.searcher.upsert(slots, rows, max(1, len(slots)))

  def _backend_delete(self, slots):
    self._searcher.searcher.delete(list(slots))

  def _backend_save(self, directory):
    # Relative asset paths (the default is absolute), so a copied directory still loads.
    self._searcher.serialize(directory, relative_path=True)

  @classmethod
  def _backend_check_params(cls, params):
    if params["mode"] == "tree":
      for value in (params["reorder"], params["tree"]["num_leaves"],
                    params["tree"]["num_leaves_to_search"]):
        if not isinstance(value, int) or value < 1:
          raise ValueError(f"tree settings must be positive ints, got {value!r}")
    elif params["mode"] != "brute_force":
      raise ValueError(f"mode must be 'tree' or 'brute_force', got {params['mode']!r}")

  @classmethod
  def _backend_load(cls, directory, manifest, ids, provenance):
    with open(os.path.join(directory, _ASSETS), encoding="utf-8") as f:
      assets = f.read()
    listed = set(manifest["files"])
    for path in re.findall(r'asset_path:\s*"([^"]*)"', assets):
      if os.path.isabs(path) or path not in listed:
        raise IndexFileError(f"{directory!r}: {_ASSETS} names {path!r}, which is not a "
                             "checksummed file of the index (absolute or unlisted path)")
    wrapped = scann.scann_ops_pybind.ScannSearcher(
        scann.scann_ops_pybind.scann_pybind.ScannNumpy(directory, assets))
    if wrapped.size() != len(ids):
      raise IndexFileError(f"{directory!r}: the ScaNN searcher holds {wrapped.size()} "
                           f"points but {len(ids)} ids are saved")
    return cls(wrapped, manifest["dim"], ids, manifest["params"], provenance,
               manifest.get("tuning"))
