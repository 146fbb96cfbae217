"""Multi-label annotation: F1, threshold search and trained heads against scikit-learn."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score

from mmalign.tasks import annotation


def _multilabel(rng, num, dim=12, tags=5):
  """Tags are noisy linear functions of the features, at different base rates."""
  weights = np.random.default_rng(3).normal(size=(dim, tags))
  offsets = np.linspace(-1.5, 1.0, tags)
  x = rng.normal(size=(num, dim)).astype(np.float32)
  logits = x @ weights / np.sqrt(dim) * 3 + offsets
  return x, (rng.random((num, tags)) < 1 / (1 + np.exp(-logits))).astype(np.int64)


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_multilabel_f1_matches_sklearn(average):
  rng = np.random.default_rng(0)
  truth = (rng.random((60, 6)) < 0.3).astype(int)
  predicted = (rng.random((60, 6)) < 0.3).astype(int)
  truth[:, 5] = predicted[:, 5] = 0  # A tag nobody has and nobody predicts.
  active = [k for k in range(6) if truth[:, k].any() or predicted[:, k].any()]
  expected = f1_score(truth, predicted, average=average, labels=active, zero_division=0)
  assert annotation.multilabel_f1(truth, predicted, average=average) == pytest.approx(expected)


def test_best_threshold_beats_every_other_cut():
  rng = np.random.default_rng(1)
  truth = (rng.random((40, 4)) < 0.35).astype(int)
  scores = np.round(truth * 0.6 + rng.random((40, 4)), 1)  # Rounded: many ties.
  best = annotation.best_threshold(scores, truth)
  f1_of = {t: annotation.multilabel_f1(truth, scores >= t) for t in np.unique(scores)}
  assert f1_of[best] == pytest.approx(max(f1_of.values()))
  assert best == max(t for t, f in f1_of.items() if f == pytest.approx(max(f1_of.values())))


def test_trained_head_matches_one_logistic_regression_per_tag():
  rng = np.random.default_rng(0)
  x_train, y_train = _multilabel(rng, 2000)
  x_test, y_test = _multilabel(rng, 2000)
  head = annotation.train_multilabel_head(x_train, y_train, steps=400, learning_rate=0.05)
  ours = head.predict(x_test)
  assert ours.shape == y_test.shape and np.all((ours >= 0) & (ours <= 1))
  theirs = np.stack([LogisticRegression(max_iter=2000).fit(x_train, y_train[:, k])
                     .predict_proba(x_test)[:, 1] for k in range(y_test.shape[1])], axis=1)
  ours_map = average_precision_score(y_test, ours, average="macro")
  theirs_map = average_precision_score(y_test, theirs, average="macro")
  assert theirs_map > 0.7
  assert abs(ours_map - theirs_map) < 0.01, (ours_map, theirs_map)
  np.testing.assert_allclose(ours, theirs, atol=0.03)


def test_mlp_head_learns_a_tag_a_linear_head_cannot():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, size=(2000, 2)).astype(np.float32)
  y = np.stack([x[:, 0] * x[:, 1] > 0, x[:, 0] > 0], axis=1).astype(int)  # XOR, linear.
  x_test = rng.uniform(-1, 1, size=(1000, 2)).astype(np.float32)
  y_test = np.stack([x_test[:, 0] * x_test[:, 1] > 0, x_test[:, 0] > 0], axis=1)
  linear = annotation.train_multilabel_head(x, y, steps=300).predict(x_test)
  mlp = annotation.train_multilabel_head(x, y, hidden=(32,), steps=600,
                                         learning_rate=0.02).predict(x_test)
  assert np.mean((linear[:, 0] > 0.5) == y_test[:, 0]) < 0.65
  assert np.mean((mlp[:, 0] > 0.5) == y_test[:, 0]) > 0.93
  assert np.mean((linear[:, 1] > 0.5) == y_test[:, 1]) > 0.97


def test_annotation_report_uses_sklearn_definitions():
  rng = np.random.default_rng(2)
  truth = (rng.random((80, 5)) < 0.3).astype(int)
  truth[:, 4] = 0  # No positive: skipped by mAP.
  scores = truth * 0.5 + rng.random((80, 5))
  report = annotation.annotation_report(truth, scores, 0.8)
  assert report["mAP"] == pytest.approx(
      average_precision_score(truth[:, :4], scores[:, :4], average="macro"))
  assert report["micro_f1"] == pytest.approx(f1_score(truth, scores >= 0.8, average="micro"))
  assert report["threshold"] == 0.8


def test_zero_shot_tag_scores_are_cosines():
  rng = np.random.default_rng(0)
  images, tags = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
  expected = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ (
      tags / np.linalg.norm(tags, axis=1, keepdims=True)).T
  np.testing.assert_allclose(annotation.zero_shot_tag_scores(images, tags), expected,
                             atol=1e-6)


@pytest.mark.parametrize("call, culprit", [
    (lambda: annotation.train_multilabel_head(np.zeros((4, 3)), np.full((4, 2), 2)),
     "every entry 0 or 1"),
    (lambda: annotation.train_multilabel_head(np.zeros((4, 3)), np.zeros((5, 2))),
     "targets has 5 rows, features 4"),
    (lambda: annotation.train_multilabel_head(np.zeros((4, 3)), np.zeros(4)), "2-D multi-hot"),
    (lambda: annotation.best_threshold(np.zeros((4, 3)), np.zeros((4, 2))), "differ"),
    (lambda: annotation.multilabel_f1(np.zeros((4, 2)), np.zeros((4, 2)), average="x"),
     "average must be"),
])
def test_bad_input_names_the_culprit(call, culprit):
  with pytest.raises(ValueError, match=culprit):
    call()
