"""Exact cosine search with the project's tiled top-k, behind the same `Index` API as ScaNN.

Why: it is the ground truth approximate search is measured by, and for moderate galleries
(or on an accelerator) fast enough to use directly; memory stays O(queries · block)."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from kernels import api as kernels_api
from mmalign.eval.retrieval_metrics import top_k_fn
from mmalign.retrieval.base import SEARCHERS, Index
from mmalign.retrieval.manifest import IndexFileError

_GALLERY = "gallery.npy"


@dataclasses.dataclass(frozen=True)
class ExactConfig:
  """num_neighbors: default k; impl: a `kernels.api.IMPLS` name ("auto": Pallas on an
  accelerator, tiled XLA on CPU); block_size: keys per tile (None: the kernel's default)."""
  num_neighbors: int = 10
  impl: str = "auto"
  block_size: int | None = None


@SEARCHERS.register("exact")
class ExactIndex(Index):
  """All rows scored for every query: recall 1 by construction, cost O(q · n · d)."""

  name = "exact"
  config_class = ExactConfig

  def __init__(self, gallery: np.ndarray, ids, params, provenance, tuning=None):
    super().__init__(gallery.shape[1], ids, params, provenance, tuning)
    self._gallery = gallery  # [count, d] float32 unit rows, on the host
    self._device_gallery = None  # Copied to the device on the first search after a change.

  @classmethod
  def _backend_build(cls, gallery, ids, config, provenance):
    kernels_api.resolve_impl(config.impl)  # Fails now, naming the allowed impls.
    params = {"mode": "exact", "num_neighbors": config.num_neighbors,
              "config": dataclasses.asdict(config)}
    return cls(gallery, ids, params, provenance)

  def _backend_search(self, queries, k):
    if self._device_gallery is None:
      self._device_gallery = jax.device_put(self._gallery)
    config = self.config
    scores, positions = top_k_fn(k, config.impl, config.block_size)(queries, self._device_gallery)
    return np.asarray(scores), np.asarray(positions)

  def _backend_upsert(self, slots, rows):
    new = np.array([slot is None for slot in slots], bool)
    gallery = np.concatenate([self._gallery, rows[new]])
    gallery[[slot for slot in slots if slot is not None]] = rows[~new]
    self._gallery, self._device_gallery = gallery, None

  def _backend_delete(self, slots):
    gallery = self._gallery.copy()
    count = len(gallery)
    for slot in slots:
      count -= 1
      gallery[slot] = gallery[count]
    self._gallery, self._device_gallery = np.ascontiguousarray(gallery[:count]), None

  def _backend_save(self, directory):
    np.save(os.path.join(directory, _GALLERY), self._gallery, allow_pickle=False)

  @classmethod
  def _backend_load(cls, directory, manifest, ids, provenance):
    gallery = np.load(os.path.join(directory, _GALLERY), allow_pickle=False)
    if gallery.dtype != np.float32 or gallery.shape != (len(ids), manifest["dim"]):
      raise IndexFileError(f"{directory!r}: {_GALLERY} is {gallery.dtype} {gallery.shape}, "
                       f"expected float32 ({len(ids)}, {manifest['dim']})")
    return cls(gallery, ids, manifest["params"], provenance, manifest.get("tuning"))
