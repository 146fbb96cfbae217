"""Classification and ranking metrics as pure numpy functions of arrays.

Definitions follow scikit-learn (the tests compare against it; it is not a dependency), so
numbers can be set beside published ones. Equal scores are one threshold, so ranking
metrics never depend on input order. Per-class averages skip a class a binary metric is
undefined for (a class missing from a small eval split says nothing about the model).
First-hit retrieval metrics (Recall@K, ranks) are re-exported from `retrieval_metrics`."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpy as np

from mmalign.eval import retrieval_metrics as rm
from mmalign.eval.retrieval_metrics import (  # Re-exported: one import for all metrics.
  chance_recall_at_k,
  exact_top_k,
  first_hit_ranks,
  retrieval_metrics,
)

__all__ = ["accuracy", "average_precision", "average_ranks", "chance_recall_at_k",
           "exact_top_k", "f1", "first_hit_ranks", "mean_average_precision",
           "mean_average_precision_retrieval", "retrieval_metrics", "roc_auc", "roc_auc_ovr"]


def _as_labels(x, name: str, n: int | None = None) -> np.ndarray:
  """Non-empty 1-D integer array (bool is accepted as 0/1)."""
  x = np.asarray(x)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array, got shape {x.shape}")
  if n is not None and x.shape[0] != n:
    raise ValueError(f"{name} has {x.shape[0]} entries, expected {n}")
  if x.dtype == bool:
    return x.astype(np.int64)
  if not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
  return x


def _as_binary(x, name: str, ndim: int) -> np.ndarray:
  """Non-empty `ndim`-D (1, or 2 for multi-hot) bool array from bools or 0/1 integers."""
  x = np.asarray(x)
  if x.dtype != bool and not np.all((x == 0) | (x == 1)):
    raise ValueError(f"{name} must be binary (0/1 or bool)")
  if x.ndim != ndim or x.size == 0:
    raise ValueError(f"{name} must be a non-empty {ndim}-D array, got {x.shape}")
  return x.astype(bool)


def _as_scores(x, name: str, shape: tuple[int, ...]) -> np.ndarray:
  """float64 scores of the given shape; non-finite values (arbitrary rank) are rejected."""
  x = np.asarray(x, dtype=np.float64)
  if x.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or inf")
  return x


def accuracy(labels, predictions) -> float:
  """Fraction of predictions equal to the label. labels, predictions: [n] int."""
  labels = _as_labels(labels, "labels")
  predictions = _as_labels(predictions, "predictions", labels.shape[0])
  return float(np.mean(labels == predictions))


def f1(labels, predictions, *, average: Literal["macro", "micro"] = "macro",
       num_classes: int | None = None) -> float:
  """F1 score of single-label predictions, as `sklearn.metrics.f1_score(zero_division=0)`.

  labels, predictions: [n] int; only classes occurring in either are scored (sklearn's
  default). num_classes, when given, only checks that every id lies in [0, num_classes)
  (a head/label mismatch). "macro": mean of per-class F1; "micro": pooled (= accuracy)."""
  labels = _as_labels(labels, "labels")
  predictions = _as_labels(predictions, "predictions", labels.shape[0])
  if num_classes is not None:
    for name, x in (("labels", labels), ("predictions", predictions)):
      if x.min() < 0 or x.max() >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got range "
                         f"[{x.min()}, {x.max()}]")
  classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  true_ids, pred_ids = np.split(inverse.reshape(-1), 2)  # [n] each, in 0..len(classes)-1
  hit = true_ids == pred_ids  # [n]
  tp = np.bincount(true_ids[hit], minlength=classes.size)  # [k]
  fn = np.bincount(true_ids, minlength=classes.size) - tp  # [k]
  fp = np.bincount(pred_ids, minlength=classes.size) - tp  # [k]
  if average == "micro":
    tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
  elif average != "macro":
    raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
  # 2tp / (2tp + fp + fn) has no 0/0 for a never-predicted class; > 0 for every class scored.
  return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def average_ranks(x) -> np.ndarray:
  """1-based ranks of x ([n]) in ascending order, tied values sharing their mean rank
  (scipy.stats.rankdata's "average"). Returns [n] float64."""
  _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
  last = np.cumsum(counts)  # [u] rank of the last member of each tie block
  return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
  """Mann–Whitney AUC (ties count 1/2) of positive: [n] bool; None when a class is missing."""
  num_pos = int(np.count_nonzero(positive))
  num_neg = positive.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return None
  rank_sum = float(np.sum(average_ranks(scores)[positive]))
  return (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)


def roc_auc(binary_labels, scores) -> float:
  """Binary ROC-AUC, as `sklearn.metrics.roc_auc_score` (ties count 1/2). binary_labels: [n]
  0/1 or bool; scores: [n] float, higher = more positive. ValueError for a single class."""
  positive = _as_binary(binary_labels, "binary_labels", 1)
  auc = _roc_auc(positive, _as_scores(scores, "scores", positive.shape))
  if auc is None:
    raise ValueError("ROC-AUC needs at least one positive and one negative label")
  return auc


def roc_auc_ovr(labels, scores) -> float:
  """Macro one-vs-rest ROC-AUC, `sklearn.metrics.roc_auc_score(labels, probs, multi_class=
  "ovr", average="macro")`, except that a class lacking a positive or a negative is skipped
  (sklearn demands every class). labels: [n] int in [0, c); scores: [n, c] float, logits or
  probabilities (only the order within each column matters)."""
  labels = _as_labels(labels, "labels")
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"scores must be 2-D [n, classes], got shape {scores.shape}")
  scores = _as_scores(scores, "scores", (labels.shape[0], scores.shape[1]))
  num_classes = scores.shape[1]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes}) (score columns)")
  aucs = [_roc_auc(labels == k, scores[:, k]) for k in range(num_classes)]
  aucs = [a for a in aucs if a is not None]
  if not aucs:
    raise ValueError("no class has both positive and negative samples")
  return float(np.mean(aucs))


def _average_precision_rows(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
  """AP of every row: mean over positives of the precision at the end of their tie block.
  scores: [r, n] float; relevant: [r, n] bool (a row without a True gets NaN) -> [r]."""
  num_rows, n = scores.shape
  order = np.argsort(-scores, axis=1, kind="stable")  # [r, n]
  sorted_scores = np.take_along_axis(scores, order, axis=1)  # [r, n] descending
  sorted_rel = np.take_along_axis(relevant, order, axis=1)  # [r, n]
  hits = np.cumsum(sorted_rel, axis=1)  # [r, n] positives among the top i+1
  positions = np.arange(n)
  block_end = np.ones((num_rows, n), bool)  # [r, n] last position of a tie block
  block_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
  # For each position, the end of its tie block: the nearest block end at or after it.
  end = np.where(block_end, positions, n)  # [r, n]
  end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
  precision_at_end = np.take_along_axis(hits, end, axis=1) / (end + 1.0)  # [r, n]
  num_pos = hits[:, -1]  # [r]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.sum(np.where(sorted_rel, precision_at_end, 0.0), axis=1) / num_pos


def average_precision(binary_labels, scores) -> float:
  """Average precision, as `sklearn.metrics.average_precision_score` including ties.
  binary_labels: [n] 0/1 or bool; scores: [n] float, higher = more positive. Raises
  ValueError without a positive label (sklearn returns 0, which looks like a real result)."""
  positive = _as_binary(binary_labels, "binary_labels", 1)
  scores = _as_scores(scores, "scores", positive.shape)
  if not positive.any():
    raise ValueError("average precision needs at least one positive label")
  return float(_average_precision_rows(scores[None], positive[None])[0])


def mean_average_precision(labels_multi_hot, scores) -> float:
  """Macro mean of per-class AP: labels_multi_hot [n, c] 0/1 or bool, scores [n, c] float.
  Classes without a positive (AP undefined) are skipped; ValueError when none has one."""
  relevant = _as_binary(labels_multi_hot, "labels_multi_hot", 2)
  scores = _as_scores(scores, "scores", relevant.shape)
  has_pos = relevant.any(axis=0)  # [c]
  if not has_pos.any():
    raise ValueError("no class has a positive label")
  return float(np.mean(_average_precision_rows(scores.T[has_pos], relevant.T[has_pos])))


def mean_average_precision_retrieval(queries, query_groups, gallery, gallery_groups,
                                     chunk_size: int = 1024) -> float:
  """Mean over queries of the AP of the whole ranked gallery; relevant = same group.

  queries: [q, d], query_groups: [q], gallery: [g, d], gallery_groups: [g]; scores are
  inner products, at most [chunk_size, g] at once. Unlike Recall@K, mAP rewards ranking all
  of a group's items high. Raises ValueError when a query's group has no gallery item."""
  queries, gallery, query_ids, gallery_ids = rm.grouped_inputs(
      queries, query_groups, gallery, gallery_groups, chunk_size)
  num = queries.shape[0]
  if num == 0:
    raise ValueError("queries is empty")
  gallery_dev = jnp.asarray(gallery)  # Moved to the device once, not per chunk.
  size = min(chunk_size, num)
  total = 0.0
  for start in range(0, num, size):
    stop = min(start + size, num)
    chunk = np.pad(queries[start:stop], [(0, size - (stop - start)), (0, 0)])  # [size, d]
    scores = np.asarray(rm.chunk_scores(chunk, gallery_dev))[:stop - start]  # [c, g]
    relevant = query_ids[start:stop, None] == gallery_ids[None, :]  # [c, g]
    total += float(np.sum(_average_precision_rows(scores, relevant)))
  return total / num
