"""Probes on frozen features: fused layout, linear vs scikit-learn, MLP, modality dropout."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from mmalign.errors import UsageError
from mmalign.tasks import probe as probe_lib


def _blobs(rng, num, num_classes=3, dim=10, spread=2.2):
  """Gaussian blobs that overlap enough for accuracy well below 100%."""
  centres = np.random.default_rng(7).normal(size=(num_classes, dim)) * 1.5
  labels = rng.integers(num_classes, size=num)
  return (centres[labels] + spread * rng.normal(size=(num, dim))).astype(np.float32), labels


def _xor(rng, num):
  x = rng.uniform(-1, 1, size=(num, 2)).astype(np.float32)
  return x, (x[:, 0] * x[:, 1] > 0).astype(np.int64)


# ----------------------------------------------------------------------------------------
# fused_features.
# ----------------------------------------------------------------------------------------


def test_fused_features_zeroes_absent_blocks_exactly():
  rng = np.random.default_rng(0)
  text, image = rng.normal(size=(2, 50, 4)).astype(np.float32)
  present = rng.random((50, 2)) < 0.6
  got = probe_lib.fused_features(text, image, present)
  t = text * present[:, :1]
  i = image * present[:, 1:]
  np.testing.assert_array_equal(got, np.concatenate([t, i, t * i], axis=1))
  text_absent = ~present[:, 0]
  assert np.all(got[text_absent][:, :4] == 0) and np.all(got[text_absent][:, 8:] == 0)
  np.testing.assert_array_equal(got[present[:, 1]][:, 4:8], image[present[:, 1]])


def test_missing_modality_equals_absent_mask():
  rng = np.random.default_rng(1)
  text, image = rng.normal(size=(2, 6, 3))
  np.testing.assert_array_equal(probe_lib.fused_features(text, None),
                                probe_lib.fused_features(text, image, [[True, False]] * 6))
  np.testing.assert_array_equal(probe_lib.probe_features("image", text, image),
                                probe_lib.fused_features(text, image, [[False, True]] * 6))
  full = probe_lib.probe_features("fused", text, image)
  np.testing.assert_allclose(full[:, 6:].sum(axis=1), np.sum(text * image, axis=1), atol=1e-6)


@pytest.mark.parametrize("args, culprit", [
    ((None, None), "both are None"),
    ((np.zeros((3, 4)), np.zeros((3, 5))), "must have one shape"),
    ((np.zeros(4), None), "text_emb must be 2-D"),
    ((np.zeros((3, 4)), np.zeros((3, 4)), np.ones((3, 3), bool)), "present must have shape"),
])
def test_fused_features_rejects_bad_input(args, culprit):
  with pytest.raises(ValueError, match=culprit):
    probe_lib.fused_features(*args)


def test_unknown_probe_input_lists_the_known_ones():
  with pytest.raises(UsageError, match="fused, image, text"):
    probe_lib.probe_features("audio", np.zeros((2, 2)), np.zeros((2, 2)))


# ----------------------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 256])
def test_linear_probe_matches_sklearn_logistic_regression(batch_size):
  rng = np.random.default_rng(0)
  x_train, y_train = _blobs(rng, 1500)
  x_test, y_test = _blobs(rng, 3000)
  probe = probe_lib.train_probe(x_train, y_train, 3, steps=400, learning_rate=0.05,
                                batch_size=batch_size)
  ours = probe.predict(x_test)
  theirs = LogisticRegression(max_iter=2000).fit(x_train, y_train).predict(x_test)
  ours_acc, theirs_acc = accuracy_score(y_test, ours), accuracy_score(y_test, theirs)
  assert 0.6 < theirs_acc < 0.95  # The problem is neither trivial nor hopeless.
  assert abs(ours_acc - theirs_acc) < 0.02, (ours_acc, theirs_acc)
  assert np.mean(ours == theirs) > 0.95  # The same decision boundary, not luck.
  probabilities = probe.predict_proba(x_test)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_mlp_probe_solves_xor_where_a_linear_probe_cannot():
  rng = np.random.default_rng(0)
  x_train, y_train = _xor(rng, 1000)
  x_test, y_test = _xor(rng, 1000)
  linear = probe_lib.train_probe(x_train, y_train, 2, steps=300)
  mlp = probe_lib.train_probe(x_train, y_train, 2, hidden=(32,), steps=600, learning_rate=0.02)
  assert accuracy_score(y_test, linear.predict(x_test)) < 0.65
  assert accuracy_score(y_test, mlp.predict(x_test)) > 0.93


def test_training_is_deterministic_per_seed():
  rng = np.random.default_rng(0)
  x, y = _xor(rng, 200)
  a, b, c = (probe_lib.train_probe(x, y, 2, hidden=(8,), steps=20, seed=s,
                                   batch_size=64) for s in (1, 1, 2))
  np.testing.assert_array_equal(a.logits(x), b.logits(x))
  assert not np.array_equal(a.logits(x), c.logits(x))


def _two_view_task(rng, num, dim=6):
  """Both modalities carry the label; the text side also has a large constant offset, so
  zeroing it moves a probe far from anything it saw unless it was trained that way."""
  labels = rng.integers(2, size=num)
  signs = 2.0 * labels[:, None] - 1.0
  text = 0.8 * signs + rng.normal(size=(num, dim)) + 4.0
  image = 0.8 * signs + rng.normal(size=(num, dim))
  return text.astype(np.float32), image.astype(np.float32), labels


def test_modality_dropout_lets_a_fused_probe_fall_back_to_the_image():
  rng = np.random.default_rng(0)
  text, image, labels = _two_view_task(rng, 2000)
  test_text, test_image, test_labels = _two_view_task(rng, 2000)
  fused = probe_lib.fused_features(text, image)
  kwargs = {"steps": 500, "learning_rate": 0.05}
  dropped = probe_lib.train_probe(fused, labels, 2, modality_dropout=0.5, **kwargs)
  plain = probe_lib.train_probe(fused, labels, 2, **kwargs)
  image_only = probe_lib.train_probe(probe_lib.fused_features(None, image), labels, 2, **kwargs)

  absent_text = probe_lib.fused_features(None, test_image)
  image_acc = accuracy_score(test_labels, image_only.predict(absent_text))
  fallback_acc = accuracy_score(test_labels, dropped.predict(absent_text))
  assert image_acc > 0.9
  # Close to a probe trained on images alone, though only a quarter of its training
  # examples (dropout 0.5, half of those text) lacked the text.
  assert fallback_acc > image_acc - 0.06
  assert accuracy_score(test_labels, plain.predict(absent_text)) < 0.8  # Without dropout it is lost.
  full = probe_lib.fused_features(test_text, test_image)
  assert accuracy_score(test_labels, dropped.predict(full)) > image_acc  # Both beat one.


@pytest.mark.parametrize("call, culprit", [
    (lambda x, y: probe_lib.train_probe(x, y + 5, 3), r"labels must lie in \[0, 3\)"),
    (lambda x, y: probe_lib.train_probe(x, y[:-1], 3), "labels has 99 entries"),
    (lambda x, y: probe_lib.train_probe(x, y.astype(float), 3), "labels must be 1-D integers"),
    (lambda x, y: probe_lib.train_probe(x[:, :4], y, 3, modality_dropout=0.3),
     "not a multiple of 3"),
    (lambda x, y: probe_lib.train_probe(x, y, 3, modality_dropout=1.0), "modality_dropout"),
    (lambda x, y: probe_lib.train_probe(x, y, 3, hidden=(0,)), "hidden sizes"),
    (lambda x, y: probe_lib.train_probe(x, y, 3, steps=1).predict(x[:, :3]),
     "features have 3 columns; this head was trained on 6"),
])
def test_bad_input_names_the_culprit(call, culprit):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(100, 6)).astype(np.float32)
  y = rng.integers(3, size=100)
  with pytest.raises(ValueError, match=culprit):
    call(x, y)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_classification_report_matches_sklearn(num_classes):
  rng = np.random.default_rng(num_classes)
  labels = rng.integers(num_classes, size=300)
  logits = rng.normal(size=(300, num_classes)) + 1.5 * np.eye(num_classes)[labels]
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  report = probe_lib.classification_report(labels, probabilities)
  predictions = probabilities.argmax(axis=1)
  assert report["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
  assert report["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
  expected_auc = (roc_auc_score(labels, probabilities[:, 1]) if num_classes == 2 else
                  roc_auc_score(labels, probabilities, multi_class="ovr"))
  assert report["roc_auc"] == pytest.approx(expected_auc)


def test_classification_report_leaves_undefined_auc_empty():
  report = probe_lib.classification_report(np.zeros(4, int), np.full((4, 2), 0.5))
  assert report["roc_auc"] is None and report["accuracy"] == 1.0
