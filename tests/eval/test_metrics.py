"""Classification and ranking metrics against scikit-learn (a test-only dependency)."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mmalign.eval import metrics as mt
from mmalign.eval import retrieval_metrics as rm

SEEDS = (0, 1, 2, 3)


def _tied_scores(rng, shape) -> np.ndarray:
  """Scores rounded to one decimal: many exact ties."""
  return np.round(rng.uniform(size=shape), 1)


def _tied_probabilities(rng, n: int, c: int) -> np.ndarray:
  """[n, c] rows summing to 1 (sklearn's multiclass ovr demands it) built from small
  integer counts, so columns hold many exactly equal values."""
  counts = rng.integers(0, 4, size=(n, c)).astype(np.float64)
  counts[counts.sum(axis=1) == 0, 0] = 1.0
  return counts / counts.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Classification.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels, preds = rng.integers(0, 5, 50), rng.integers(0, 5, 50)
  assert mt.accuracy(labels, preds) == pytest.approx(skm.accuracy_score(labels, preds))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["macro", "micro"])
def test_f1_matches_sklearn(seed, average):
  rng = np.random.default_rng(seed)
  # Class ids up to 7 over 30 samples: some classes occur only in labels or only in
  # predictions, which exercises the zero-division paths.
  labels, preds = rng.integers(0, 8, 30), rng.integers(0, 8, 30)
  expected = skm.f1_score(labels, preds, average=average, zero_division=0)
  assert mt.f1(labels, preds, average=average) == pytest.approx(expected)


def test_f1_absent_classes_are_left_out():
  """Classes 3..9 occur nowhere; num_classes only validates, it does not lower macro F1."""
  labels = np.array([0, 0, 1, 2, 2, 2])
  preds = np.array([0, 1, 1, 2, 0, 2])
  expected = skm.f1_score(labels, preds, average="macro", zero_division=0)
  assert mt.f1(labels, preds, num_classes=10) == pytest.approx(expected)
  assert mt.f1(labels, preds) == pytest.approx(expected)
  # A class only ever predicted scores F1 = 0 and does count (sklearn's default labels).
  preds_extra = np.array([0, 1, 1, 2, 5, 2])
  assert mt.f1(labels, preds_extra) == pytest.approx(
      skm.f1_score(labels, preds_extra, average="macro", zero_division=0))


def test_f1_micro_is_accuracy_and_errors():
  rng = np.random.default_rng(7)
  labels, preds = rng.integers(0, 4, 40), rng.integers(0, 4, 40)
  assert mt.f1(labels, preds, average="micro") == pytest.approx(mt.accuracy(labels, preds))
  with pytest.raises(ValueError, match="average"):
    mt.f1(labels, preds, average="weighted")
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    mt.f1(labels, preds, num_classes=3)
  with pytest.raises(ValueError, match="entries"):
    mt.accuracy(labels, preds[:-1])
  with pytest.raises(ValueError, match="integers"):
    mt.accuracy(labels.astype(float), preds)


# ----------------------------------------------------------------------------------------
# ROC-AUC.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_matches_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 60)
  scores = _tied_scores(rng, 60)
  assert mt.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))


def test_roc_auc_extremes_and_errors():
  assert mt.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
  assert mt.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
  assert mt.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # All tied: chance.
  with pytest.raises(ValueError, match="one positive and one negative"):
    mt.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="NaN"):
    mt.roc_auc([0, 1], [0.1, np.nan])
  with pytest.raises(ValueError, match="binary"):
    mt.roc_auc([0, 2], [0.1, 0.2])


def test_average_ranks_match_scipy():
  from scipy.stats import rankdata  # pylint: disable=import-outside-toplevel
  x = np.round(np.random.default_rng(0).uniform(size=40), 1)
  np.testing.assert_allclose(mt.average_ranks(x), rankdata(x))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [3, 5])
def test_roc_auc_ovr_matches_sklearn(seed, num_classes):
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, 60)])
  probs = _tied_probabilities(rng, labels.size, num_classes)
  expected = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  assert mt.roc_auc_ovr(labels, probs) == pytest.approx(expected)


def test_roc_auc_ovr_skips_class_without_positives():
  """Class 3 never occurs: it is skipped, the rest average as in sklearn's binary AUC."""
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 3, 50)
  scores = rng.normal(size=(50, 4))  # Logits work too: only column order matters.
  expected = np.mean([skm.roc_auc_score(labels == k, scores[:, k]) for k in range(3)])
  assert mt.roc_auc_ovr(labels, scores) == pytest.approx(expected)
  with pytest.raises(ValueError, match="no class"):
    mt.roc_auc_ovr(np.zeros(5, int), scores[:5])
  with pytest.raises(ValueError, match="score columns"):
    mt.roc_auc_ovr(labels, scores[:, :2])


# ----------------------------------------------------------------------------------------
# Average precision.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [1, 6])
def test_average_precision_matches_sklearn(seed, decimals):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 70)
  labels[0] = 1
  scores = np.round(rng.uniform(size=70), decimals)
  expected = skm.average_precision_score(labels, scores)
  assert mt.average_precision(labels, scores) == pytest.approx(expected)


def test_average_precision_ties_form_one_threshold():
  # One positive and one negative tied at the top: precision 1/2 there, not 1 or 0.
  assert mt.average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
  assert mt.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
  # Input order does not matter for tied scores.
  labels, scores = np.array([1, 0, 1, 0, 1]), np.array([0.9, 0.9, 0.3, 0.3, 0.3])
  perm = np.random.default_rng(0).permutation(5)
  assert mt.average_precision(labels[perm], scores[perm]) == pytest.approx(
      mt.average_precision(labels, scores))
  assert mt.average_precision(labels, scores) == pytest.approx(
      skm.average_precision_score(labels, scores))
  with pytest.raises(ValueError, match="positive"):
    mt.average_precision([0, 0], [0.1, 0.2])


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_average_precision_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=(40, 6)) < 0.3).astype(int)
  labels[:, 2] = 0  # A class with no positives: skipped.
  scores = _tied_scores(rng, (40, 6))
  has_pos = labels.any(axis=0)
  expected = skm.average_precision_score(labels[:, has_pos], scores[:, has_pos],
                                         average="macro")
  assert mt.mean_average_precision(labels, scores) == pytest.approx(expected)
  with pytest.raises(ValueError, match="no class"):
    mt.mean_average_precision(np.zeros((4, 3)), scores[:4, :3])


# ----------------------------------------------------------------------------------------
# Retrieval mAP.
# ----------------------------------------------------------------------------------------


def _tied_retrieval_problem(seed: int, num_queries: int = 23, num_gallery: int = 40,
                            dim: int = 4, num_groups: int = 6):
  """Entries in {-1, 0, 1}: every dot product is an exact small integer, so the full
  numpy score matrix and the chunked one agree bitwise and ties are plentiful."""
  rng = np.random.default_rng(seed)
  queries = rng.integers(-1, 2, (num_queries, dim)).astype(np.float32)
  gallery = rng.integers(-1, 2, (num_gallery, dim)).astype(np.float32)
  gallery_groups = np.concatenate(
      [np.arange(num_groups), rng.integers(0, num_groups, num_gallery - num_groups)])
  query_groups = rng.integers(0, num_groups, num_queries)
  return queries, query_groups, gallery, gallery_groups


@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("chunk_size", [1, 5, 23, 1024])
def test_retrieval_map_matches_per_query_sklearn(seed, chunk_size):
  queries, query_groups, gallery, gallery_groups = _tied_retrieval_problem(seed)
  scores = queries @ gallery.T  # [q, g]
  relevant = query_groups[:, None] == gallery_groups[None, :]  # [q, g]
  expected = np.mean([skm.average_precision_score(r, s) for r, s in zip(relevant, scores)])
  got = mt.mean_average_precision_retrieval(queries, query_groups, gallery, gallery_groups,
                                            chunk_size=chunk_size)
  assert got == pytest.approx(expected)


def test_retrieval_map_perfect_and_errors():
  gallery = np.eye(3, dtype=np.float32)
  groups = np.array(["a", "b", "c"])  # Any sortable group labels work.
  assert mt.mean_average_precision_retrieval(gallery, groups, gallery, groups) == 1.0
  with pytest.raises(ValueError, match="no correct item"):
    mt.mean_average_precision_retrieval(gallery, np.array(["a", "b", "z"]), gallery, groups)
  with pytest.raises(ValueError, match="chunk_size"):
    mt.mean_average_precision_retrieval(gallery, groups, gallery, groups, chunk_size=0)


def test_retrieval_metrics_are_re_exported():
  assert mt.retrieval_metrics is rm.retrieval_metrics
  assert mt.first_hit_ranks is rm.first_hit_ranks
  assert mt.exact_top_k is rm.exact_top_k
  assert mt.chance_recall_at_k is rm.chance_recall_at_k
