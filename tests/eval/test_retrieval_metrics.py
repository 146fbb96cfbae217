"""Retrieval metrics against independent numpy / scipy references."""

import numpy as np
import pytest
from scipy.special import comb

from mmalign.eval import retrieval_metrics as rm


def _unit_rows(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_problem(seed: int, num_queries: int, num_gallery: int, dim: int,
                    num_groups: int):
  """Random unit embeddings; every group has gallery items, queries draw from them."""
  rng = np.random.default_rng(seed)
  queries = _unit_rows(rng.normal(size=(num_queries, dim)))
  gallery = _unit_rows(rng.normal(size=(num_gallery, dim)))
  gallery_groups = np.concatenate(
      [np.arange(num_groups), rng.integers(0, num_groups, num_gallery - num_groups)])
  rng.shuffle(gallery_groups)
  query_groups = rng.integers(0, num_groups, num_queries)
  return queries, query_groups, gallery, gallery_groups


def _tied_problem(seed: int, num_queries: int, num_gallery: int, dim: int = 4,
                  num_groups: int = 6):
  """Embeddings with entries in {-1, 0, 1}: every dot product is an exact small integer,
  so ties are exact whatever the summation order, and there are many of them."""
  rng = np.random.default_rng(seed)
  queries = rng.integers(-1, 2, (num_queries, dim)).astype(np.float32)
  gallery = rng.integers(-1, 2, (num_gallery, dim)).astype(np.float32)
  gallery[num_gallery // 2:] = gallery[:num_gallery - num_gallery // 2]  # Duplicates.
  gallery_groups = rng.integers(0, num_groups, num_gallery)
  gallery_groups[:num_groups] = np.arange(num_groups)
  query_groups = rng.integers(0, num_groups, num_queries)
  return queries, query_groups, gallery, gallery_groups


def _reference_ranks(queries, query_groups, gallery, gallery_groups, ties):
  """Sort each row by (score descending, then wrong-before-correct if pessimistic) and
  take the position of the first correct item."""
  scores = queries.astype(np.float64) @ gallery.astype(np.float64).T  # [q, g]
  ranks = []
  for row, group in zip(scores, query_groups):
    correct = gallery_groups == group
    tie_key = correct if ties == "pessimistic" else ~correct
    order = np.lexsort((tie_key, -row))  # Last key is the primary one.
    ranks.append(int(np.argmax(correct[order])) + 1)
  return np.array(ranks)


# ---------------------------------------------------------------------------- exact_top_k


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_exact_top_k_matches_numpy(chunk_size):
  queries, _, gallery, _ = _random_problem(0, num_queries=50, num_gallery=300, dim=16,
                                           num_groups=10)
  k = 9
  scores, indices = rm.exact_top_k(queries, gallery, k, chunk_size=chunk_size)
  assert scores.shape == indices.shape == (50, k)
  assert scores.dtype == np.float32
  reference = queries.astype(np.float64) @ gallery.astype(np.float64).T  # [q, g]
  expected = -np.sort(-reference, axis=1)[:, :k]
  np.testing.assert_allclose(scores, expected, atol=1e-5)
  # The returned ids must really carry those scores, and be distinct.
  np.testing.assert_allclose(np.take_along_axis(reference, indices, 1), expected, atol=1e-5)
  assert all(len(set(row)) == k for row in indices.tolist())
  np.testing.assert_array_equal(indices, np.argsort(-reference, axis=1)[:, :k])


def test_exact_top_k_ties_prefer_lower_index():
  queries, _, gallery, _ = _tied_problem(1, num_queries=23, num_gallery=40)
  scores, indices = rm.exact_top_k(queries, gallery, 12, chunk_size=5)
  reference = queries @ gallery.T
  expected = np.argsort(-reference, axis=1, kind="stable")[:, :12]
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_array_equal(scores, np.take_along_axis(reference, expected, 1))


def test_exact_top_k_rejects_bad_input():
  gallery = np.eye(4, dtype=np.float32)
  with pytest.raises(ValueError, match="query dim 3 != gallery dim 4"):
    rm.exact_top_k(np.ones((2, 3)), gallery, 1)
  with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
    rm.exact_top_k(np.ones((2, 4)), gallery, 5)
  with pytest.raises(ValueError, match="NaN"):
    rm.exact_top_k(np.full((2, 4), np.nan), gallery, 1)
  with pytest.raises(ValueError, match="chunk_size"):
    rm.exact_top_k(np.ones((2, 4)), gallery, 1, chunk_size=0)


# ------------------------------------------------------------------------ first_hit_ranks


@pytest.mark.parametrize("ties", rm.TIE_CONVENTIONS)
@pytest.mark.parametrize("chunk_size", [1, 8, 5, 100])
def test_first_hit_ranks_with_ties_and_many_correct(ties, chunk_size):
  problem = _tied_problem(2, num_queries=37, num_gallery=60)
  ranks = rm.first_hit_ranks(*problem, chunk_size=chunk_size, ties=ties)
  assert ranks.shape == (37,)
  np.testing.assert_array_equal(ranks, _reference_ranks(*problem, ties=ties))


def test_tie_conventions_bound_each_other_and_differ_on_ties():
  problem = _tied_problem(3, num_queries=37, num_gallery=60)
  optimistic = rm.first_hit_ranks(*problem, ties="optimistic")
  pessimistic = rm.first_hit_ranks(*problem, ties="pessimistic")
  assert np.all(optimistic <= pessimistic)
  assert np.any(optimistic < pessimistic)  # The tied data really exercises ties.


def test_first_hit_ranks_random_floats_match_reference():
  problem = _random_problem(4, num_queries=45, num_gallery=200, dim=12, num_groups=15)
  ranks = rm.first_hit_ranks(*problem, chunk_size=16)
  np.testing.assert_array_equal(ranks, _reference_ranks(*problem, ties="pessimistic"))
  # Without ties both conventions agree.
  np.testing.assert_array_equal(ranks, rm.first_hit_ranks(*problem, ties="optimistic"))


def test_first_hit_ranks_agree_with_exact_top_k():
  queries, query_groups, gallery, gallery_groups = _random_problem(
      5, num_queries=40, num_gallery=150, dim=8, num_groups=30)
  ranks = rm.first_hit_ranks(queries, query_groups, gallery, gallery_groups)
  _, indices = rm.exact_top_k(queries, gallery, 5)
  hit_in_top5 = (gallery_groups[indices] == query_groups[:, None]).any(axis=1)
  np.testing.assert_array_equal(ranks <= 5, hit_in_top5)


def test_collapsed_embeddings_get_the_worst_rank_when_pessimistic():
  gallery_groups = np.array([0, 0, 1, 2, 2, 2, 3])
  query_groups = np.array([0, 2, 3])
  queries = np.ones((3, 4), np.float32) / 2
  gallery = np.ones((7, 4), np.float32) / 2
  pessimistic = rm.first_hit_ranks(queries, query_groups, gallery, gallery_groups)
  optimistic = rm.first_hit_ranks(queries, query_groups, gallery, gallery_groups,
                                  ties="optimistic")
  np.testing.assert_array_equal(pessimistic, [6, 5, 7])  # g - m + 1
  np.testing.assert_array_equal(optimistic, [1, 1, 1])


def test_ranks_from_scores_by_hand():
  scores = np.array([[0.9, 0.5, 0.5, 0.1],
                     [0.2, 0.8, 0.3, 0.8]], np.float32)
  correct = np.array([[False, True, False, True],
                      [False, False, True, True]])
  np.testing.assert_array_equal(rm.ranks_from_scores(scores, correct, "pessimistic"), [3, 2])
  np.testing.assert_array_equal(rm.ranks_from_scores(scores, correct, "optimistic"), [2, 1])


def test_groups_beyond_int32_and_strings():
  queries, query_groups, gallery, gallery_groups = _random_problem(
      6, num_queries=20, num_gallery=50, dim=8, num_groups=7)
  expected = rm.first_hit_ranks(queries, query_groups, gallery, gallery_groups)
  big = np.int64(2**40)  # Would wrap if cast to int32; ids must stay distinct.
  np.testing.assert_array_equal(
      rm.first_hit_ranks(queries, query_groups * big, gallery, gallery_groups * big),
      expected)
  names = np.array(list("abcdefg"))
  np.testing.assert_array_equal(
      rm.first_hit_ranks(queries, names[query_groups], gallery, names[gallery_groups]),
      expected)


def test_queries_without_a_correct_item_are_reported():
  gallery = np.eye(3, dtype=np.float32)
  queries = np.eye(3, dtype=np.float32)
  with pytest.raises(ValueError, match="2 of 3 queries have no correct item"):
    rm.first_hit_ranks(queries, [0, 7, 9], gallery, [0, 1, 2])
  with pytest.raises(ValueError, match="1 of 2 queries"):
    rm.chance_recall_at_k([0, 5], [0, 1, 2], 1)


def test_first_hit_ranks_rejects_mismatched_groups_and_ties():
  gallery = np.eye(3, dtype=np.float32)
  with pytest.raises(ValueError, match="gallery_groups must have shape"):
    rm.first_hit_ranks(gallery, [0, 1, 2], gallery, [0, 1])
  with pytest.raises(ValueError, match="ties must be one of"):
    rm.first_hit_ranks(gallery, [0, 1, 2], gallery, [0, 1, 2], ties="average")


# ---------------------------------------------------------------------- retrieval_metrics


def test_retrieval_metrics_by_hand():
  metrics = rm.retrieval_metrics(np.array([1, 2, 3, 10, 20]), ks=(1, 5, 10))
  assert metrics == pytest.approx({
      "recall@1": 0.2, "recall@5": 0.6, "recall@10": 0.8,
      "median_rank": 3.0, "mean_rank": 7.2, "num_queries": 5})
  assert isinstance(metrics["num_queries"], int)


def test_retrieval_metrics_rejects_bad_ranks():
  with pytest.raises(ValueError, match="non-empty"):
    rm.retrieval_metrics(np.array([], np.int32))
  with pytest.raises(ValueError, match="1-based"):
    rm.retrieval_metrics(np.array([0, 1]))


# ---------------------------------------------------------------------------- chance level


def test_chance_recall_matches_scipy_hypergeometric():
  rng = np.random.default_rng(7)
  gallery_groups = rng.integers(0, 12, 90)
  query_groups = rng.choice(np.unique(gallery_groups), 40)
  g = gallery_groups.size
  for k in (1, 5, 10, 50, 89, 90, 200):
    m = np.array([np.sum(gallery_groups == group) for group in query_groups])
    expected = np.mean(1 - comb(g - m, min(k, g), exact=False) / comb(g, min(k, g)))
    got = rm.chance_recall_at_k(query_groups, gallery_groups, k)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), k


def test_chance_recall_simple_cases():
  assert rm.chance_recall_at_k([0], np.arange(10), 3) == pytest.approx(0.3)  # m = 1: k/g
  assert rm.chance_recall_at_k([0], [0, 0, 0, 1], 2) == pytest.approx(1.0)  # k > g - m
  assert rm.chance_recall_at_k([4], np.arange(10), 10) == pytest.approx(1.0)


def test_chance_recall_monte_carlo():
  rng = np.random.default_rng(8)
  gallery_groups = np.repeat(np.arange(8), [1, 2, 3, 4, 5, 6, 1, 8])  # g = 30
  query_groups = np.array([0, 1, 2, 3, 4, 5, 7, 3])
  k, trials = 4, 20_000
  correct = query_groups[:, None] == gallery_groups[None, :]  # [q, g]
  # A random ranking's top k is a uniformly random k-subset of the gallery.
  top = np.argsort(rng.random((trials, gallery_groups.size)), axis=1)[:, :k]  # [t, k]
  hits = correct[:, top].any(axis=2)  # [q, t]
  simulated = hits.mean()
  predicted = rm.chance_recall_at_k(query_groups, gallery_groups, k)
  # Standard error is about 0.5 / sqrt(trials) ~ 0.0035 (less, as queries average).
  assert simulated == pytest.approx(predicted, abs=0.012)


# ------------------------------------------------------------------------ recall_vs_exact


def test_recall_vs_exact_by_hand():
  exact = np.array([[0, 1, 2], [3, 4, 5]])
  approx = np.array([[2, 1, 9], [5, 5, 5]])  # Duplicate ids count once.
  assert rm.recall_vs_exact(approx, exact) == pytest.approx((2 / 3 + 1 / 3) / 2)
  assert rm.recall_vs_exact(exact[:, ::-1], exact) == 1.0


def test_recall_vs_exact_matches_set_loop():
  rng = np.random.default_rng(9)
  exact = np.stack([rng.permutation(50)[:10] for _ in range(30)])
  approx = np.where(rng.random((30, 10)) < 0.3, rng.integers(-1, 60, (30, 10)), exact)
  expected = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
  assert rm.recall_vs_exact(approx, exact) == pytest.approx(expected)


def test_recall_vs_exact_rejects_shape_mismatch():
  with pytest.raises(ValueError, match="equal shape"):
    rm.recall_vs_exact(np.zeros((2, 3)), np.zeros((2, 4)))


def test_recall_vs_exact_counts_ties_with_vectors():
  """A duplicate of a true neighbour is an equally correct answer once vectors are given."""
  rng = np.random.default_rng(4)
  gallery = rng.normal(size=(40, 5))
  gallery[39] = gallery[3]  # Item 39 ties with item 3.
  queries = rng.normal(size=(6, 5))
  scores = queries @ gallery.T
  masked = scores.copy()
  masked[:, 39] = -np.inf  # The exact search happened to return 3, never its twin.
  exact = np.argsort(-masked, axis=1, kind="stable")[:, :4]
  swapped = np.where(exact == 3, 39, exact)  # The tied twin instead of 3.
  wrong = exact.copy()
  wrong[:, 0] = np.argsort(-masked, axis=1, kind="stable")[:, 20]  # A true miss.
  wrong[wrong == 3] = 39
  assert rm.recall_vs_exact(exact, exact, queries=queries, gallery=gallery) == 1.0
  assert rm.recall_vs_exact(swapped, exact, queries=queries, gallery=gallery) == 1.0
  has_3 = (exact == 3).any(axis=1)
  assert rm.recall_vs_exact(swapped, exact) == pytest.approx(1 - has_3.mean() / 4)
  # Brute-force definition: ids scoring at least the k-th exact score, at most k per row.
  kth = np.take_along_axis(scores, exact, 1).min(axis=1)
  expected = np.mean([min(4, sum(scores[r, i] >= kth[r] - 1e-5 for i in set(row) if i >= 0))
                      for r, row in enumerate(wrong)]) / 4
  assert rm.recall_vs_exact(wrong, exact, queries=queries, gallery=gallery) == \
      pytest.approx(expected)
  with pytest.raises(ValueError, match="both queries and gallery"):
    rm.recall_vs_exact(exact, exact, queries=queries)
