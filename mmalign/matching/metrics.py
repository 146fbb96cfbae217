"""How often a matcher finds the true partner."""

from __future__ import annotations

import numpy as np

from mmalign.errors import UsageError


def matching_accuracy(predicted, truth) -> float:
  """Fraction of rows whose predicted column equals the true one.

  Both are [n] int with -1 meaning "no partner". A row with truth -1 (its partner is
  absent from the gallery) counts as correct only if the matcher also said -1, so a
  matcher that always answers something is penalised on such rows, and one that abstains
  (-1) on a row that has a partner is wrong there too.
  """
  predicted = np.asarray(predicted)
  truth = np.asarray(truth)
  if predicted.shape != truth.shape or predicted.ndim != 1 or predicted.size == 0:
    raise UsageError(
        f"predicted and truth must be equal non-empty [n] vectors, got {predicted.shape} "
        f"and {truth.shape}")
  return float(np.mean(predicted == truth))
