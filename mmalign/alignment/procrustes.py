"""Orthogonal Procrustes: the closed-form rotation from one frozen embedding space to another.

Given n paired rows (source_i, target_i), the orthogonal W minimising ‖source·W − target‖_F
is W = U·Vᵀ, where U·Σ·Vᵀ is the SVD of sourceᵀ·target (Schönemann, 1966). It is the
training-free baseline for regression alignment: a rotation cannot change distances
inside a space, so what it recovers is how far the two spaces already share a geometry.

Everything here is host-side numpy in float64: the fit is one [d_s, d_t] SVD, cheap next
to producing the embeddings, and float64 keeps W orthogonal to ~1e-15. Inputs may be
numpy or jax arrays.

Widths may differ. With d_s ≥ d_t, W: [d_s, d_t] has orthonormal columns (WᵀW = I);
with d_s < d_t it has orthonormal rows (W·Wᵀ = I) and the mapped rows span only a
d_s-dimensional subspace of the target space. Both equal zero-padding the narrower side
to the wider, solving the square problem and dropping the padded columns.
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
  min(d_s, d_t) independent pairs the minimiser is not unique and one of them is
  returned. Raises ValueError on mismatched n.
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

  Centring lets the rotation act about the data's centre instead of the origin, which
  matters for embeddings that all lie in one cone (ReLU features, raw pixels); the map
  then adds the target mean back. source: [n, d_s]; target: [n, d_t].
  """
  source, target = _as_matrix(source, "source"), _as_matrix(target, "target")
  _check_pairs(source, target)
  if center:
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
  else:
    source_mean, target_mean = np.zeros(source.shape[1]), np.zeros(target.shape[1])
  rotation = orthogonal_procrustes(source - source_mean, target - target_mean)
  return ProcrustesMap(source_mean, target_mean, rotation)
