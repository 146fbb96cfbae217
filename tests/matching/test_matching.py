"""Matchers against brute force / scipy, Sinkhorn marginals and stability, the registry."""

import numpy as np
import pytest

scipy_optimize = pytest.importorskip("scipy.optimize")

from mmalign.matching import (
  MATCHERS,
  linear_assignment,
  log_marginals,
  matching_accuracy,
  mutual_nearest_neighbours,
  nearest_neighbour,
  sinkhorn,
  sinkhorn_matching,
)
from mmalign.registry import UnknownNameError

SHAPES = [(5, 5), (7, 4), (4, 7), (1, 3), (3, 1), (12, 12), (9, 15), (15, 9)]


def _random_scores(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _total(scores, matches):
  rows = np.flatnonzero(matches >= 0)
  return scores[rows, matches[rows]].sum()


@pytest.mark.parametrize("seed", range(20))
def test_linear_assignment_matches_scipy_total(seed):
  scores = _random_scores(seed, SHAPES[seed % len(SHAPES)])
  matches = linear_assignment(scores)
  n, m = scores.shape
  assert matches.shape == (n,)
  used = matches[matches >= 0]
  assert len(used) == min(n, m) and len(set(used.tolist())) == len(used)  # one-to-one
  rows, cols = scipy_optimize.linear_sum_assignment(scores, maximize=True)
  np.testing.assert_allclose(_total(scores, matches), scores[rows, cols].sum(), rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 6), (5, 9), (9, 5)])
def test_nearest_and_mutual_match_brute_force(shape):
  # Integer scores make ties likely, which checks the lowest-index tie rule too.
  scores = np.random.default_rng(1).integers(0, 4, size=shape).astype(np.float32)
  n, m = shape
  nearest = [max(range(m), key=lambda j: (scores[i, j], -j)) for i in range(n)]
  best_row = [max(range(n), key=lambda i: (scores[i, j], -i)) for j in range(m)]
  mutual = [nearest[i] if best_row[nearest[i]] == i else -1 for i in range(n)]
  np.testing.assert_array_equal(nearest_neighbour(scores), nearest)
  np.testing.assert_array_equal(mutual_nearest_neighbours(scores), mutual)


@pytest.mark.parametrize("shape", [(6, 6), (4, 7), (7, 4)])
def test_sinkhorn_plan_has_uniform_marginals(shape):
  n, m = shape
  plan = np.exp(np.asarray(sinkhorn(_random_scores(2, shape), epsilon=0.5, num_iters=500)))
  assert plan.shape == shape
  np.testing.assert_allclose(plan.sum(axis=1), np.full(n, 1 / n), atol=1e-4)
  np.testing.assert_allclose(plan.sum(axis=0), np.full(m, 1 / m), atol=1e-4)


@pytest.mark.parametrize("shape", [(6, 6), (4, 7), (7, 4)])
def test_sinkhorn_dustbin_plan_has_augmented_marginals(shape):
  n, m = shape
  log_plan = sinkhorn(_random_scores(3, shape), epsilon=0.5, num_iters=500, dustbin=True,
                      dustbin_score=0.3)
  plan = np.exp(np.asarray(log_plan))
  assert plan.shape == (n + 1, m + 1)
  rows = np.append(np.ones(n), m) / (n + m)
  cols = np.append(np.ones(m), n) / (n + m)
  np.testing.assert_allclose(plan.sum(axis=1), rows, atol=1e-4)
  np.testing.assert_allclose(plan.sum(axis=0), cols, atol=1e-4)
  log_rows, log_cols = log_marginals(n, m, dustbin=True)
  np.testing.assert_allclose(np.exp(log_rows), rows, rtol=1e-6)
  np.testing.assert_allclose(np.exp(log_cols), cols, rtol=1e-6)


@pytest.mark.parametrize("dustbin", [False, True])
def test_sinkhorn_is_finite_for_huge_scores(dustbin):
  scores = _random_scores(4, (8, 5)) * 1e4
  log_plan = np.asarray(sinkhorn(scores, epsilon=1e-3, num_iters=50, dustbin=dustbin,
                                 dustbin_score=1e4))
  assert np.all(np.isfinite(log_plan))
  assert np.all(np.isfinite(np.asarray(sinkhorn_matching(scores, epsilon=1e-3))))


@pytest.mark.parametrize("name", ["nearest", "mutual", "hungarian", "sinkhorn"])
def test_every_matcher_recovers_a_noisy_permutation(name):
  rng = np.random.default_rng(5)
  n = 16
  perm = rng.permutation(n)
  scores = np.eye(n, dtype=np.float32)[perm] + 0.1 * rng.random((n, n), dtype=np.float32)
  assert matching_accuracy(np.asarray(MATCHERS.get(name)(scores)), perm) == 1.0


def test_sinkhorn_dustbin_leaves_rows_without_partner_unmatched():
  # Rows 0..4 have partners; rows 5, 6 match nothing well, so their mass goes to the dustbin.
  rng = np.random.default_rng(6)
  scores = np.full((7, 5), -1.0, np.float32) + 0.1 * rng.random((7, 5), dtype=np.float32)
  scores[np.arange(5), np.arange(5)[::-1]] = 1.0
  truth = np.array([4, 3, 2, 1, 0, -1, -1])
  matches = sinkhorn_matching(scores, epsilon=0.05, num_iters=200, dustbin=True,
                              dustbin_score=0.0)
  np.testing.assert_array_equal(matches, truth)


def test_matching_accuracy_counts_like_numpy():
  rng = np.random.default_rng(7)
  truth = rng.integers(-1, 5, size=50)
  predicted = np.where(rng.random(50) < 0.6, truth, rng.integers(-1, 5, size=50))
  expected = sum(int(p == t) for p, t in zip(predicted, truth)) / 50
  assert matching_accuracy(predicted, truth) == pytest.approx(expected)
  assert matching_accuracy([-1, 2], [-1, -1]) == 0.5  # -1 truth needs a -1 prediction
  with pytest.raises(ValueError):
    matching_accuracy([1, 2], [1])


def test_registry_lookup_and_unknown_name():
  assert MATCHERS.names() == ["hungarian", "mutual", "nearest", "sinkhorn"]
  assert MATCHERS.get("hungarian") is linear_assignment
  with pytest.raises(UnknownNameError, match="registered: hungarian, mutual"):
    MATCHERS.get("greedy")


def test_bad_shapes_fail_with_usage_error():
  with pytest.raises(ValueError, match=r"\[n, m\]"):
    nearest_neighbour(np.zeros(3))
  with pytest.raises(ValueError, match="finite"):
    linear_assignment(np.array([[np.nan, 1.0]]))
