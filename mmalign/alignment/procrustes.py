"""Orthogonal Procrustes: the closed-form rotation from one frozen embedding space to another.

The training-free baseline for regression alignment (Schönemann, 1966): a rotation keeps
distances, so it measures how far the two spaces already share a geometry. Host-side float64
numpy (inputs may be numpy or jax arrays); NaN/inf inputs raise ValueError.

Widths may differ: with d_s ≥ d_t, W [d_s, d_t] has orthonormal columns (WᵀW = I); with
d_s < d_t orthonormal rows, and mapped rows span only a d_s-dimensional target subspace.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _as_matrix(x, name: str) -> np.ndarray:
  """float64 [n, d]; NaN/inf rejected, as they would silently poison the SVD."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [n, dim]; got shape {x.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} holds NaN or inf")
  return x


def _check_pairs(source: np.ndarray, target: np.ndarray) -> None:
  if source.shape[0] != target.shape[0]:
    raise ValueError(f"Procrustes needs paired rows: source has {source.shape[0]} rows, "
                     f"target {target.shape[0]}; row i of each must describe the same item")
  if source.shape[0] == 0:
    raise ValueError("Procrustes needs at least one pair; got none")


def orthogonal_procrustes(source, target) -> np.ndarray:
  """W: [d_s, d_t] float64 minimising ‖source·W − target‖_F with orthonormal columns (rows).

  source: [n, d_s]; target: [n, d_t]; row i of each is one pair. With fewer than
  min(d_s, d_t) independent pairs one of several minimisers is returned. Raises ValueError
  on mismatched or zero n.
  """
  source, target = _as_matrix(source, "source"), _as_matrix(target, "target")
  _check_pairs(source, target)
  u, _, vt = np.linalg.svd(source.T @ target, full_matrices=False)  # [d_s, k], [k, d_t]
  return u @ vt


@dataclasses.dataclass(frozen=True)
class ProcrustesMap:
  """x ↦ (x − source_mean)·rotation + target_mean, fitted by `fit_procrustes_map`."""
  source_mean: np.ndarray  # [d_s] float64; zeros when fitted with center=False
  target_mean: np.ndarray  # [d_t] float64
  rotation: np.ndarray  # [d_s, d_t] float64, orthonormal columns (or rows if d_s < d_t)

  def apply(self, source) -> np.ndarray:
    """source: [m, d_s] → [m, d_t] float64 in the target space (not re-normalised)."""
    source = _as_matrix(source, "source")
    if source.shape[1] != self.rotation.shape[0]:
      raise ValueError(f"this map takes rows of width {self.rotation.shape[0]}; "
                       f"got {source.shape[1]}")
    return (source - self.source_mean) @ self.rotation + self.target_mean


def fit_procrustes_map(source, target, *, center: bool = True) -> ProcrustesMap:
  """The best rotation between paired rows, after removing each side's mean if `center`.

  Centring rotates about the data's centre rather than the origin, which matters for
  embeddings in one cone (ReLU features, raw pixels). source: [n, d_s]; target: [n, d_t].
  """
  source, target = _as_matrix(source, "source"), _as_matrix(target, "target")
  _check_pairs(source, target)
  if center:
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
  else:
    source_mean, target_mean = np.zeros(source.shape[1]), np.zeros(target.shape[1])
  rotation = orthogonal_procrustes(source - source_mean, target - target_mean)
  return ProcrustesMap(source_mean, target_mean, rotation)
