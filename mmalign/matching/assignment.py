"""Exact one-to-one maximum-weight assignment (Hungarian-style), host-side via scipy.

Not jit-able: solved on the host by `scipy.optimize.linear_sum_assignment`. scipy is only a
test extra, so it is imported on first use and a missing install says how to get it.
"""

from __future__ import annotations

import numpy as np

from mmalign.errors import UsageError
from mmalign.matching.neighbours import UNMATCHED


def _scipy_linear_sum_assignment():
  try:
    from scipy.optimize import linear_sum_assignment  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "linear_assignment needs scipy, which mmalign installs only as a test extra; "
        "run `pip install scipy` (or `pip install -e .[test]`)") from e
  return linear_sum_assignment


def linear_assignment(scores) -> np.ndarray:
  """One-to-one matching that maximises the total score; returns [n] int32 numpy.

  Rectangular is fine: with n > m the n - m unassigned rows get -1. Empty or non-finite
  scores raise UsageError.
  """
  scores = np.asarray(scores, dtype=np.float64)  # [n, m]
  if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
    raise UsageError(f"scores must be a non-empty [n, m] matrix, got shape {scores.shape}")
  if not np.all(np.isfinite(scores)):
    raise UsageError("linear_assignment needs finite scores (no NaN or inf)")
  rows, cols = _scipy_linear_sum_assignment()(scores, maximize=True)
  matches = np.full(scores.shape[0], UNMATCHED, dtype=np.int32)  # [n]
  matches[rows] = cols
  return matches
