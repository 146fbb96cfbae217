"""Choose ScaNN's speed/recall knobs against exact ground truth on held-out queries.

Recall of a tree index depends on the data, so defaults cannot promise a target; `tune`
measures it and keeps the fastest point that reaches it. Whether a point meets the target
never depends on the machine's load (recall is counted, not timed); only the choice among
points that meet it does. Queries must be held out, or self-matches flatter recall."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from mmalign import utils
from mmalign.eval import retrieval_metrics as rm
from mmalign.retrieval import vectors
from mmalign.retrieval.manifest import Provenance
from mmalign.retrieval.scann_index import ScannConfig, ScannIndex


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  num_leaves: int
  leaves_to_search: int
  reorder: int
  recall: float
  queries_per_s: float


def exact_neighbours(gallery: np.ndarray, queries: np.ndarray, k: int,
                     chunk: int = 256) -> np.ndarray:
  """Positions [q, min(k, n)] of the true top-k by dot product of unit rows gallery [n, d]
  and queries [q, d], best first; `chunk` queries at a time."""
  _, positions = rm.exact_top_k(queries, gallery, min(k, gallery.shape[0]), chunk_size=chunk)
  return positions.astype(np.int64)


def recall_at_k(found_ids: np.ndarray, exact_ids: np.ndarray, queries=None,
                gallery=None) -> float:
  """`retrieval_metrics.recall_vs_exact` of found [q, k] against exact [q, k] ids."""
  return rm.recall_vs_exact(found_ids, exact_ids, queries=queries, gallery=gallery)


def leaf_ladder(num_leaves: int, steps: int = 14) -> list[int]:
  """Leaves to probe, ascending and roughly geometric from 1 to num_leaves."""
  ladder = {max(1, round(num_leaves ** (i / (steps - 1)))) for i in range(steps)}
  return sorted(ladder | {num_leaves})


def batched_qps(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
                repeats: int = 3) -> tuple[float, np.ndarray]:
  """(queries/s, ids [q, k]) of `search(queries)`: the best of `repeats` timed runs after an
  untimed warm-up; the best, not the mean, because on a shared machine noise only adds time."""
  search(queries[:8])
  found, times = utils.time_calls(lambda: search(queries), repeats=max(1, repeats), warmup=0)
  return len(queries) / min(times), np.asarray(found)


def sweep(index: ScannIndex, queries: np.ndarray, exact_ids: np.ndarray, k: int, *,
          leaves: Sequence[int] | None = None, reorders: Sequence[int] = (),
          target_recall: float | None = None, min_gain: float | None = None,
          repeats: int = 3, gallery: np.ndarray | None = None) -> list[SweepPoint]:
  """Measures (recall, QPS) of a tree index over its query-time knobs; leaves it as found.

  queries: [q, d] unit rows; exact_ids: [q, k] true item ids. For each reorder depth,
  leaves are walked upwards until a point reaches target_recall, or (with min_gain) one
  more step adds less recall than that: past that plateau more leaves only cost time.
  gallery: [n, d] rows at the index's ids 0..n-1; given, ties with the k-th true one hit."""
  before = (index.params["tree"]["num_leaves_to_search"], index.params["reorder"])
  num_leaves = index.params["tree"]["num_leaves"]
  points = []
  for reorder in sorted(set(reorders)):
    for probe in (leaves or leaf_ladder(num_leaves)):
      index.set_search_params(num_leaves_to_search=probe, reorder=reorder)
      qps, found = batched_qps(lambda q: index.search(q, k)[1], queries, repeats)
      point = SweepPoint(num_leaves, min(probe, num_leaves), reorder,
                         recall_at_k(found, exact_ids, None if gallery is None else queries,
                                     gallery), qps)
      gain = point.recall - points[-1].recall if points and points[-1].reorder == reorder \
          else np.inf
      points.append(point)
      if ((target_recall is not None and point.recall >= target_recall)
          or (min_gain is not None and gain < min_gain)):
        break
  index.set_search_params(num_leaves_to_search=before[0], reorder=before[1])
  return points


def choose(points: Sequence[SweepPoint], target_recall: float) -> tuple[SweepPoint, bool]:
  """The fastest point reaching the target, else the most accurate one; and whether met."""
  met = [p for p in points if p.recall >= target_recall]
  if met:
    return max(met, key=lambda p: p.queries_per_s), True
  return max(points, key=lambda p: (p.recall, p.queries_per_s)), False


def tune(index_or_embeddings, queries, *, target_recall: float = 0.95, k: int = 10,
         gallery=None, config: ScannConfig = ScannConfig(),
         num_leaves: Sequence[int] | None = None, reorders: Sequence[int] | None = None,
         ids=None, provenance: Provenance = Provenance(),
         repeats: int = 3) -> tuple[ScannIndex, dict]:
  """Returns (index set to the chosen point, the tuning record also in index.tuning).

  index_or_embeddings: a ScannIndex (only its query-time knobs change; `gallery` is then
    required: [count, d] in `index.ids` order) or [n, d] embeddings (each `num_leaves`
    candidate, default sqrt(n) x 0.5/1/2, is built with `config`, `ids`, `provenance`).
  queries: [q, d] held-out queries. reorders: depths to try (default k x 2, 5, 10, 25).
  If no point reaches the target, the most accurate one is kept with record["met"] False.
  The record goes into the manifest on `save`."""
  if not 0 < target_recall <= 1:
    raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
  k = vectors.check_k(k)
  if isinstance(index_or_embeddings, ScannIndex):
    if gallery is None:
      raise ValueError("tune(index, ...) needs gallery=[count, d] (in index.ids order) for "
                       "the exact ground truth")
    candidates = [index_or_embeddings]
    gallery = vectors.unit_rows(gallery, "gallery", index_or_embeddings.dim)
    if gallery.shape[0] != index_or_embeddings.count:
      raise ValueError(f"gallery has {gallery.shape[0]} rows, the index "
                       f"{index_or_embeddings.count}")
  else:
    gallery = vectors.unit_rows(index_or_embeddings, "embeddings")
    base = max(1, round(math.sqrt(gallery.shape[0])))
    sizes = num_leaves or sorted({max(1, round(base * f)) for f in (0.5, 1.0, 2.0)})
    candidates = [ScannIndex.build(gallery, dataclasses.replace(config, num_leaves=size),
                                   ids=ids, provenance=provenance) for size in sizes]
  queries = vectors.unit_rows(queries, "queries", gallery.shape[1])
  exact = candidates[0].ids[exact_neighbours(gallery, queries, k)]  # [q, k] item ids
  reorders = reorders or [k * f for f in (2, 5, 10, 25)]

  points, owners = [], []  # owners[i]: the index points[i] was measured on.
  for index in candidates:
    if index.is_brute_force:  # Exact already: nothing to tune.
      measured = [SweepPoint(0, 0, 0, recall_at_k(index.search(queries, k)[1], exact), math.nan)]
    else:
      measured = sweep(index, queries, exact, k, reorders=reorders,
                       target_recall=target_recall, repeats=repeats)
    points += measured
    owners += [index] * len(measured)
  chosen, met = choose(points, target_recall)
  index = owners[points.index(chosen)]
  index.set_search_params(num_leaves_to_search=chosen.leaves_to_search, reorder=chosen.reorder)
  index.tuning = {"target_recall": target_recall, "k": k, "met": met,
                  "chosen": dataclasses.asdict(chosen), "measured_recall": chosen.recall,
                  "num_queries": int(queries.shape[0]),
                  "sweep": [dataclasses.asdict(p) for p in points]}
  return index, index.tuning
