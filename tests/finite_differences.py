"""Central finite differences: an independent check of hand-derived numpy gradients."""

import numpy as np


def numeric_gradient(fn, x, eps: float = 1e-6) -> np.ndarray:
  """d fn / d x for a scalar fn, x taken as float64 (scalars too), one coordinate at a time."""
  x = np.array(x, np.float64)
  gradient = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[i] += eps
    down[i] -= eps
    gradient[i] = (fn(up) - fn(down)) / (2 * eps)
  return gradient
