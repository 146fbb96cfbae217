"""Multi-label image annotation: which tags (colours, shapes, ...) an image shows.

Tags are scored zero-shot (cosine with each tag's prompt-ensemble text embedding) or by a
trained head (one sigmoid per tag on frozen features, the `probe` machinery). Ranking is
judged by mAP; set predictions need a threshold: 0.5 for the head's probabilities, and for
cosines, which have none, `best_threshold` fitted on the training split.
"""

from __future__ import annotations

from typing import Literal

import jax
import numpy as np

from mmalign.eval import metrics
from mmalign.tasks import probe as probe_lib
from mmalign.tasks.zero_shot import zero_shot_logits


def zero_shot_tag_scores(image_emb, tag_emb) -> np.ndarray:
  """Cosine of each image [n, d] with each tag embedding [t, d]: [n, t] float32."""
  return zero_shot_logits(image_emb, tag_emb)


class MultilabelHead(probe_lib.Head):
  """One sigmoid per tag."""

  def predict(self, features) -> np.ndarray:
    """[n, f] → [n, t] tag probabilities."""
    return np.asarray(jax.nn.sigmoid(self.logits(features)))


def _as_targets(targets, num: int | None = None) -> np.ndarray:
  """[n, t] multi-hot as float32, checked to be 0/1."""
  targets = np.asarray(targets)
  if targets.ndim != 2 or targets.size == 0:
    raise ValueError(f"targets must be a non-empty 2-D multi-hot array [n, tags], got "
                     f"shape {targets.shape}")
  if num is not None and targets.shape[0] != num:
    raise ValueError(f"targets has {targets.shape[0]} rows, features {num}")
  if not np.all((targets == 0) | (targets == 1)):
    raise ValueError("targets must be multi-hot: every entry 0 or 1")
  return targets.astype(np.float32)


def train_multilabel_head(features, targets, **fit_kwargs) -> MultilabelHead:
  """Sigmoid-BCE head on features [n, f] for multi-hot targets [n, t]; kwargs: `fit_head`'s."""
  targets = _as_targets(targets, np.shape(features)[0])
  return probe_lib.fit_head(features, targets, targets.shape[1], loss="sigmoid",
                            head_class=MultilabelHead, **fit_kwargs)


def multilabel_f1(targets, predictions, *, average: Literal["micro", "macro"] = "micro"
                  ) -> float:
  """F1 of multi-hot predictions [n, t] against targets [n, t].

  "micro" pools the counts over all tags (sklearn's micro F1 on indicator matrices);
  "macro" averages per-tag F1 over tags occurring in targets or predictions, as `metrics.f1`.
  """
  truth = _as_targets(targets).astype(bool)
  predicted = _as_targets(predictions, truth.shape[0]).astype(bool)
  if predicted.shape != truth.shape:
    raise ValueError(f"predictions {predicted.shape} and targets {truth.shape} differ")
  tp = np.sum(truth & predicted, axis=0)  # [t]
  fp = np.sum(~truth & predicted, axis=0)  # [t]
  fn = np.sum(truth & ~predicted, axis=0)  # [t]
  if average == "micro":
    tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
  elif average != "macro":
    raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
  active = (tp + fp + fn) > 0
  if not active.any():
    return 0.0
  return float(np.mean(2 * tp[active] / (2 * tp[active] + fp[active] + fn[active])))


def best_threshold(scores, targets) -> float:
  """The global cut `scores >= threshold` that maximises micro-F1 on (scores, targets).

  scores, targets: [n, t]. Every distinct score is a candidate; ties in F1 go to the
  higher threshold (fewer tags predicted).
  """
  truth = _as_targets(targets)
  scores = np.asarray(scores, np.float64)
  if scores.shape != truth.shape:
    raise ValueError(f"scores {scores.shape} and targets {truth.shape} differ")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contains NaN or inf")
  flat_scores, flat_truth = scores.ravel(), truth.ravel()
  order = np.argsort(-flat_scores, kind="stable")
  sorted_scores = flat_scores[order]
  tp = np.cumsum(flat_truth[order])  # [cells] positives among the top k
  block_end = np.append(sorted_scores[:-1] != sorted_scores[1:], True)  # A whole tie block.
  k = np.arange(1, flat_scores.size + 1)
  f1 = np.where(block_end, 2 * tp / (k + flat_truth.sum()), -1.0)
  return float(sorted_scores[int(np.argmax(f1))])


def annotation_report(targets, scores, threshold: float) -> dict[str, float]:
  """mAP (threshold-free) and micro/macro F1 of `scores >= threshold`.

  targets: [n, t] multi-hot; scores: [n, t], higher = more likely. mAP skips tags
  without a positive.
  """
  truth = _as_targets(targets)
  scores = np.asarray(scores)
  predictions = scores >= threshold
  return {"mAP": metrics.mean_average_precision(truth, scores),
          "micro_f1": multilabel_f1(truth, predictions, average="micro"),
          "macro_f1": multilabel_f1(truth, predictions, average="macro"),
          "threshold": float(threshold)}
