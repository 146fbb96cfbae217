"""What every searcher shares: checked inputs, item ids, updates, save and load.

A backend (ScaNN, exact top-k) only stores unit rows at positions 0..count-1 and answers
"best positions for these queries"; `Index` owns the rest, once for all backends: item ids
(results are ids, never positions), swap-with-last deletes (ScaNN's rule), and saves that
replace the target only once complete, so a crash never leaves a half-written index.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, ClassVar

import numpy as np

from mmalign.errors import UsageError
from mmalign.registry import Registry
from mmalign.retrieval import manifest as manifest_lib
from mmalign.retrieval import vectors
from mmalign.retrieval.manifest import IndexFileError, Provenance

IDS_FILE = "ids.npy"


class Index:
  """A searchable gallery of unit vectors. Subclasses implement the backend hooks, on
  positions (int64; a missing slot may be NaN-scored or negative):

    _backend_build(gallery, ids, config, provenance), a classmethod -> Index
    _backend_search(queries [q, d] unit rows, 1 <= k <= count) -> (scores, positions) [q, k']
    _backend_upsert(slots, rows): rows[i] to slots[i], or appended in order where it is None
    _backend_delete(slots): each slot in turn, the last row moving into it
    _backend_save(directory); _backend_load(directory, manifest, ids, provenance) -> Index
  """

  name: ClassVar[str]  # The registry name, stored in the manifest.
  config_class: ClassVar[type]  # Its settings (a dataclass with `num_neighbors`).

  def __init__(self, dim: int, ids: np.ndarray, params: dict[str, Any],
               provenance: Provenance = Provenance(), tuning: dict | None = None):
    """Use `build` or `load`; subclasses keep their backend state themselves."""
    self.dim = int(dim)
    self._ids = ids  # [count] int64
    self._position: dict[int, int] | None = None  # id -> position, built on first update.
    self.params, self.provenance, self.tuning = params, provenance, tuning
    self.default_k = int(params.get("num_neighbors", 10))

  @property
  def count(self) -> int:
    return int(self._ids.shape[0])

  @property
  def ids(self) -> np.ndarray:
    """[count] int64: the item id at each position (a copy)."""
    return self._ids.copy()

  @property
  def config(self):
    """The `config_class` instance the index was built (or tuned) with."""
    return self.config_class(**self.params["config"])

  @classmethod
  def build(cls, embeddings, config=None, *, ids=None,
            provenance: Provenance = Provenance()) -> "Index":
    """Indexes embeddings: [n, d] (normalised here; the caller's array is not changed).
    ids: [n] distinct non-negative item ids (default 0..n-1); n may be 0 (an empty
    index that upserts can fill). config: the subclass's config (None: its default)."""
    gallery = vectors.unit_rows(embeddings, "embeddings")  # [n, d]
    ids = vectors.item_ids(ids, gallery.shape[0])
    return cls._backend_build(gallery, ids, config or cls.config_class(), provenance)

  def search(self, queries, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by cosine, best first.

    queries: [q, d], or [d] for one query (the low-latency path). k: a positive int
    (UsageError otherwise; None: `num_neighbors`), clamped to `count`. Returns (scores
    float32, ids int64), each [q, min(k, count)] ([min(k, count)] for one query). Slots a
    tree probe could not fill hold id -1 (`vectors.MISSING_ID`) and score -inf, never a real
    item. Raises ValueError naming query rows with NaN, inf or zero norm."""
    k = min(vectors.check_k(self.default_k if k is None else k), self.count)
    single = np.ndim(queries) == 1
    queries = vectors.unit_rows(np.reshape(queries, (1, -1)) if single else queries,
                                "queries", self.dim)  # [q, d]
    if queries.shape[0] == 0 or k == 0:
      scores = positions = np.zeros((queries.shape[0], 0))  # `finish` casts both.
    elif single:
      scores, positions = self._backend_search_one(queries[0], k)
    else:
      scores, positions = self._backend_search(queries, k)
    scores, ids = vectors.finish(scores, positions, k, self._ids)
    return (scores[0], ids[0]) if single else (scores, ids)

  def upsert(self, ids, embeddings) -> None:
    """Replaces the vectors of known ids and appends the others: ids [m] (distinct
    non-negative ints, else UsageError), embeddings [m, d]."""
    rows = vectors.unit_rows(embeddings, "embeddings", self.dim)  # [m, d]
    ids = vectors.item_ids(ids, rows.shape[0])
    position = self._positions()
    slots = [position.get(i) for i in ids.tolist()]  # None: a new id, appended.
    self._backend_upsert(slots, rows)
    new = ids[np.array([slot is None for slot in slots], bool)]
    for i in new.tolist():
      position[i] = len(position)
    self._ids = np.concatenate([self._ids, new])

  def delete(self, ids) -> None:
    """Removes items by id (an int or a sequence of ints; UsageError for floats, bools,
    strings); raises KeyError naming ids the index does not hold."""
    ids = np.unique(vectors.integer_ids(ids).reshape(-1))
    position = self._positions()
    unknown = [i for i in ids.tolist() if i not in position]
    if unknown:
      raise KeyError(f"cannot delete ids not in the index: {unknown[:10]}"
                     f"{' ...' if len(unknown) > 10 else ''}")
    slots = []
    for i in ids.tolist():  # Swap-with-last, one id at a time: ScaNN's order of moves.
      slot, last = position.pop(i), len(position)
      if slot != last:
        moved = int(self._ids[last])
        self._ids[slot] = moved
        position[moved] = slot
      self._ids = self._ids[:last]
      slots.append(slot)
    self._backend_delete(slots)

  def save(self, directory: str | os.PathLike) -> str:
    """Writes the index to directory (replacing an index saved there); returns the path."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and os.listdir(directory) and not os.path.isfile(
        os.path.join(directory, manifest_lib.MANIFEST)):
      raise IndexFileError(f"{directory!r} exists and is not a saved index; refusing to "
                           "replace its contents")
    tmp = f"{directory}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    self._backend_save(tmp)
    np.save(os.path.join(tmp, IDS_FILE), self._ids, allow_pickle=False)
    manifest_lib.write(tmp, {
        "searcher": self.name, "dim": self.dim, "count": self.count,
        "normalisation": manifest_lib.NORMALISATION, "metric": manifest_lib.METRIC,
        "provenance": dataclasses.asdict(self.provenance),
        "items": {"ids_file": IDS_FILE, "dtype": "int64",
                  "key": self.provenance.item_key or "row of the indexed array"},
        "params": self.params, "tuning": self.tuning})
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory

  @classmethod
  def load(cls, directory: str | os.PathLike, *, dim: int | None = None,
           expect: Provenance | None = None, verify: bool = True) -> "Index":
    """Reads an index `save` wrote, refusing a mismatch (see `manifest.check_expected`)
    with the caller's query width `dim` or model's provenance `expect`. verify: check every
    file's sha256 first (reads the whole directory once)."""
    directory = os.fspath(directory)
    manifest = manifest_lib.read(directory, verify=verify)
    if manifest["searcher"] != cls.name:
      raise IndexFileError(f"{directory!r} holds a {manifest['searcher']!r} index, not "
                           f"{cls.name!r}; load it with retrieval.searchers.load_index")
    manifest_lib.check_expected(manifest, directory, dim=dim, expect=expect)
    ids = np.load(os.path.join(directory, IDS_FILE), allow_pickle=False)
    if ids.dtype != np.int64 or ids.shape != (manifest["count"],):
      raise IndexFileError(f"{directory!r}: {IDS_FILE} has dtype {ids.dtype} and shape "
                           f"{ids.shape}, expected int64 ({manifest['count']},)")
    try:  # A negative id would come back from search looking like a missing slot.
      vectors.item_ids(ids, len(ids), name=IDS_FILE)
    except UsageError as e:
      raise IndexFileError(f"{directory!r}: {e}; rebuild the index") from None
    try:
      vectors.check_k(manifest["params"].get("num_neighbors", 10))
      cls.config_class(**manifest["params"]["config"])
      cls._backend_check_params(manifest["params"])
    except (KeyError, TypeError, ValueError) as e:
      raise IndexFileError(
          f"{os.path.join(directory, manifest_lib.MANIFEST)} is malformed: its params do not "
          f"fit a {cls.name!r} index ({type(e).__name__}: {e}); rebuild the index") from None
    index = cls._backend_load(directory, manifest, ids, Provenance(**manifest["provenance"]))
    if index.count != manifest["count"]:
      raise IndexFileError(f"{directory!r}: backend holds {index.count} items, manifest "
                           f"says {manifest['count']}")
    return index

  def _positions(self) -> dict[int, int]:
    if self._position is None:
      self._position = {int(i): p for p, i in enumerate(self._ids.tolist())}
    return self._position

  def _backend_search_one(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """query: [d] unit row -> (scores [1, k'], positions [1, k'])."""
    return self._backend_search(query[None], k)

  @classmethod
  def _backend_check_params(cls, params: dict[str, Any]) -> None:
    """Raises KeyError, TypeError or ValueError where saved params do not fit the backend."""


SEARCHERS: Registry[type[Index]] = Registry("searcher")  # Filled by the backend modules.
