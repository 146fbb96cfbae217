"""How often a matcher finds the true partner."""

from __future__ import annotations

import numpy as np

from mmalign.errors import UsageError


def matching_accuracy(predicted, truth) -> float:
  """Fraction of rows whose predicted column equals the true one.

  Both are [n] int with -1 meaning "no partner"; a row with truth -1 is correct only if the
  matcher also abstained (-1), so always answering is penalised as much as abstaining.
  """
  predicted = np.asarray(predicted)
  truth = np.asarray(truth)
  if predicted.shape != truth.shape or predicted.ndim != 1 or predicted.size == 0:
    raise UsageError(
        f"predicted and truth must be equal non-empty [n] vectors, got {predicted.shape} "
        f"and {truth.shape}")
  return float(np.mean(predicted == truth))
