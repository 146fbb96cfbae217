"""One gallery split over processes: each process holds shards (saved indexes) of its own.

    <directory>/shards.json                   num_shards, searcher, dim, counts, provenance
    <directory>/shard-00000-of-00002/ ...     one saved `Index` per shard (ids are global)

`build_sharded` makes process p build and save shard p of the gallery rows it holds; a
search (`ShardedIndex.search`) asks every process the same queries, each answers from its
shards, and the per-shard top-k lists meet in the global top-k through JAX's multi-process
all-gather, ordered by score, then by the lower id (as one index orders ties). A process
may hold several shards, so an index built by 8 processes is searched by 2, or by 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmalign import utils
from mmalign.retrieval import searchers, vectors
from mmalign.retrieval.manifest import IndexFileError, IndexMismatchError, Provenance

SHARDS_FILE = "shards.json"
_SHARD = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


def shard_name(shard: int, num_shards: int) -> str:
  return f"shard-{shard:05d}-of-{num_shards:05d}"


def build_sharded(directory: str, searcher: str, embeddings, ids, config=None, *,
                  provenance: Provenance = Provenance()) -> None:
  """Collective: every process indexes its rows (embeddings [n_p, d], global ids [n_p])
  as shard `process_index` of `process_count`; process 0 writes the manifest last."""
  shard, num_shards = jax.process_index(), jax.process_count()
  index = searchers.build_index(searcher, embeddings, config, ids=ids, provenance=provenance)
  index.save(os.path.join(directory, shard_name(shard, num_shards)))
  counts = _all_gather(np.array([index.count], np.int64)).reshape(-1)  # Also a barrier.
  if shard == 0:
    write_manifest(directory, searcher, index.dim, counts.tolist(), provenance)
  _all_gather(np.zeros((1,), np.int64))  # Nobody reads the manifest before it exists.


def write_manifest(directory: str, searcher: str, dim: int, counts: list[int],
                   provenance: Provenance) -> None:
  utils.write_json(os.path.join(directory, SHARDS_FILE), {
      "num_shards": len(counts), "searcher": searcher, "dim": int(dim),
      "counts": [int(c) for c in counts], "provenance": dataclasses.asdict(provenance)})


class ShardedIndex:
  """The shards of one process (shard s belongs to process s % process_count)."""

  def __init__(self, shards: list, manifest: dict, process_count: int):
    self.shards, self.manifest, self._process_count = shards, manifest, process_count

  @property
  def count(self) -> int:
    return int(sum(self.manifest["counts"]))

  @property
  def name(self) -> str:
    return self.manifest["searcher"]

  @classmethod
  def load(cls, directory: str, *, process_index: int | None = None,
           process_count: int | None = None, expect: Provenance | None = None
           ) -> "ShardedIndex":
    """This process's shards; IndexFileError naming the shard when the directory does not
    hold exactly the manifest's shards, of its searcher, count and provenance."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    manifest = read_manifest(directory)
    if expect is not None and manifest["provenance"] != dataclasses.asdict(expect):
      differing = sorted(key for key, value in dataclasses.asdict(expect).items()
                         if manifest["provenance"].get(key) != value)
      raise IndexMismatchError(f"sharded index {directory!r} was built for another "
                               f"{', '.join(differing)}; rebuild it (--mode=index)")
    mine = range(process_index, manifest["num_shards"], process_count)
    shards = [_load_shard(directory, manifest, shard) for shard in mine]
    return cls(shards, manifest, process_count)

  def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Collective over the processes that loaded this index, each with the same queries
    [q, d] (or one [d]): (scores [q, k'] float32, global ids [q, k'] int64), k' = min(k,
    count)."""
    if np.ndim(queries) == 1:  # One query [d]: ([k'], [k']).
      scores, ids = self.search(np.reshape(queries, (1, -1)), k)
      return scores[0], ids[0]
    k = min(vectors.check_k(k), self.count)
    queries = vectors.unit_rows(queries, "queries", self.manifest["dim"])  # [q, d]
    found = [shard.search(queries, k) for shard in self.shards if shard.count]
    scores = np.concatenate([s for s, _ in found] or [np.zeros((len(queries), 0))], axis=1)
    ids = np.concatenate([i for _, i in found] or [np.zeros((len(queries), 0))], axis=1)
    scores, ids = merge_top_k(scores.astype(np.float32), ids.astype(np.int64), k)
    if self._process_count > 1:  # [processes, q, k] → the global top-k.
      all_scores = _all_gather(scores)
      # int64 travels as pairs of int32: JAX without x64 would narrow it.
      all_ids = _all_gather(np.ascontiguousarray(ids).view(np.int32)).view(np.int64)
      scores, ids = merge_top_k(np.concatenate(list(all_scores), axis=1),
                                np.concatenate(list(all_ids), axis=1), k)
    return scores, ids


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k best of [q, m] candidates by score, then lower id; missing slots (id -1) last,
  padded to k with missing slots."""
  missing = ids < 0
  key_score = np.where(missing, np.inf, -scores)
  key_id = np.where(missing, np.iinfo(np.int64).max, ids)
  order = np.lexsort((key_id, key_score), axis=1)[:, :k]  # Last key sorts first.
  scores = np.take_along_axis(np.where(missing, vectors.MISSING_SCORE, scores), order, 1)
  ids = np.take_along_axis(np.where(missing, vectors.MISSING_ID, ids), order, 1)
  pad = k - ids.shape[1]
  return (np.pad(scores, ((0, 0), (0, pad)), constant_values=vectors.MISSING_SCORE),
          np.pad(ids, ((0, 0), (0, pad)), constant_values=vectors.MISSING_ID))


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, SHARDS_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except OSError as e:
    raise IndexFileError(f"{path} cannot be read ({e.strerror}): not a sharded index, or "
                         "its build did not finish") from None
  found = sorted(name for name in os.listdir(directory) if _SHARD.match(name))
  wanted = [shard_name(s, manifest["num_shards"]) for s in range(manifest["num_shards"])]
  missing, foreign = sorted(set(wanted) - set(found)), sorted(set(found) - set(wanted))
  if missing or foreign:
    what = (f"shard {missing[0]} is missing" if missing else
            f"{foreign[0]} is not one of its {manifest['num_shards']} shards")
    raise IndexFileError(f"{directory!r}: {what} ({SHARDS_FILE} names {len(wanted)}); "
                         "rebuild the index")
  return manifest


def _load_shard(directory: str, manifest: dict, shard: int):
  name = shard_name(shard, manifest["num_shards"])
  index = searchers.load_index(os.path.join(directory, name), dim=manifest["dim"])
  if index.name != manifest["searcher"] or index.count != manifest["counts"][shard] or (
      dataclasses.asdict(index.provenance) != manifest["provenance"]):
    raise IndexFileError(f"{directory!r}: shard {name} holds {index.count} {index.name} "
                         f"items of {dataclasses.asdict(index.provenance)}, but {SHARDS_FILE} "
                         f"says {manifest['counts'][shard]} {manifest['searcher']} items of "
                         f"{manifest['provenance']}; rebuild the index")
  return index


def _all_gather(x: np.ndarray) -> np.ndarray:
  """[processes, *x.shape]: every process's x, on every process (one process: [1, ...])."""
  if jax.process_count() == 1:
    return x[None]
  return np.asarray(multihost_utils.process_allgather(x, tiled=False))
