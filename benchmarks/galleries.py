"""Synthetic embedding galleries for the retrieval benchmarks (seeded, flag-free)."""

from __future__ import annotations

import numpy as np


def mixture(n: int, num_queries: int, dim: int, clusters: int, spread: float,
            seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(gallery [n, dim], queries [q, dim]): float32 unit rows of one skewed mixture.

  Cluster c has weight ∝ 1/(c+1) (a few huge clusters, a long tail), spread
  spread · lognormal(0, 0.35), noise with standard deviations ∝ i^-1/2 along a random
  basis (anisotropic), and its centre near one of 40 super-centres (clusters overlap).
  Queries are fresh draws, never gallery rows.
  """
  rng = np.random.default_rng(seed)
  supers = unit_rows(rng.normal(size=(40, dim)))
  centres = unit_rows(supers[rng.integers(0, 40, clusters)]
                  + 0.7 * rng.normal(size=(clusters, dim)) / np.sqrt(dim))
  weights = 1.0 / np.arange(1, clusters + 1)
  weights /= weights.sum()
  scale = spread * np.exp(rng.normal(0, 0.35, clusters)) / np.sqrt(dim)  # [clusters]
  spectrum = np.arange(1, dim + 1) ** -0.5
  spectrum *= np.sqrt(dim / np.sum(spectrum ** 2))  # [dim], mean square 1
  basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)  # [dim, dim]

  def draw(count: int, draw_rng) -> np.ndarray:
    members = draw_rng.choice(clusters, size=count, p=weights)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
      c = members[start:start + 100_000]
      noise = draw_rng.standard_normal((len(c), dim), dtype=np.float32) * spectrum.astype(
          np.float32)
      out[start:start + len(c)] = unit_rows(centres[c] + scale[c, None] * (noise @ basis))
    return out

  return draw(n, np.random.default_rng(seed + 1)), draw(num_queries, np.random.default_rng(seed + 2))


def unit_rows(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length, float32."""
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
