"""What every searcher does to its inputs and outputs, so the traps are handled once.

Inputs go through `unit_rows`: ScaNN has no cosine metric, silently copies anything not
float32 C-contiguous, and answers a NaN query with garbage instead of an error. Outputs: a
tree search that probed leaves holding fewer than k points pads with id 0 (a real item) and
score NaN; `finish` marks such slots `MISSING_ID` (-1, never an item id) with
`MISSING_SCORE` (-inf, after every real score, so rows stay best-first)."""

from __future__ import annotations

import reprlib

import numpy as np

from mmalign.errors import UsageError

MISSING_ID = -1
MISSING_SCORE = -np.inf
_ROWS_NAMED = 10  # At most this many culprit rows are listed in an error.


def _row_list(rows: np.ndarray) -> str:
  shown = ", ".join(str(int(r)) for r in rows[:_ROWS_NAMED])
  return f"[{shown}{', ...' if len(rows) > _ROWS_NAMED else ''}]"


def unit_rows(x, name: str, dim: int | None = None) -> np.ndarray:
  """x: [n, d] of real numbers -> float32 C-contiguous [n, d] with unit rows (a new array).
  Raises ValueError naming `name` and the offending rows: not 2-D, wrong width (when
  `dim` is given), NaN/inf entries, zero norm (cosine is undefined there)."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
  if dim is not None and x.shape[1] != dim:
    raise ValueError(f"{name} has dim {x.shape[1]} but the index holds dim {dim}")
  x = np.array(x, dtype=np.float32, order="C", copy=True)  # The caller's array is untouched.
  squares = np.einsum("ij,ij->i", x, x)  # [n]; NaN/inf entries make it non-finite
  odd = np.flatnonzero(~np.isfinite(squares))
  if odd.size:
    bad = odd[~np.isfinite(x[odd]).all(axis=1)]
    if bad.size:
      raise ValueError(f"{name} has NaN or inf in {bad.size} row(s): rows {_row_list(bad)}")
    # Finite rows whose float32 sum of squares overflowed: their norm in float64.
    squares[odd] = 1.0
    x[odd] /= np.linalg.norm(x[odd].astype(np.float64), axis=1, keepdims=True).astype(np.float32)
  zero = np.flatnonzero(squares == 0)
  if zero.size:
    raise ValueError(f"{name} has {zero.size} zero-norm row(s): rows {_row_list(zero)}; "
                     "cosine similarity is undefined for them")
  x /= np.sqrt(squares)[:, None]
  return x


def check_k(k) -> int:
  """k must be a positive integer; `Index.search` clamps it to the index size."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise UsageError(f"k must be a positive integer, got {k!r}")
  return int(k)


def integer_ids(ids, name: str = "ids") -> np.ndarray:
  """ids: an int or a sequence/array of ints -> int64 array of the same shape. Floats,
  bools and strings are refused rather than cast: casting would turn id 1.7 into item 1
  and True into item 1, and act on an item the caller never named."""
  array = np.asarray(ids)
  integers = array.dtype.kind in "iu" and (isinstance(ids, np.ndarray) or not any(
      isinstance(i, (bool, np.bool_)) for i in np.ravel(np.asarray(ids, dtype=object))))
  if array.size and not integers:  # [1, True] converts to int64: its True is found above.
    shown = reprlib.repr(ids).replace("\n", " ")
    raise UsageError(f"{name} must be integers (item ids >= 0), got {shown}")
  return array.astype(np.int64)


def item_ids(ids, count: int, name: str = "ids") -> np.ndarray:
  """[count] int64 of distinct non-negative ids (None -> 0..count-1); names duplicates."""
  if ids is None:
    return np.arange(count, dtype=np.int64)
  ids = integer_ids(ids, name)
  if ids.ndim != 1 or ids.shape[0] != count:
    raise UsageError(f"{name} must be 1-D with one id per row ({count}), got shape "
                     f"{ids.shape}")
  negative = np.flatnonzero(ids < 0)
  if negative.size:
    raise UsageError(f"{name} must be >= 0 ({MISSING_ID} marks a missing result); "
                     f"negative at rows {_row_list(negative)}")
  values, counts = np.unique(ids, return_counts=True)
  repeated = values[counts > 1]
  if repeated.size:
    raise UsageError(f"{name} must be distinct; repeated: {_row_list(repeated)}")
  return ids


def finish(scores, positions, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Backend output -> (scores [q, k] float32, item ids [q, k] int64), missing marked.

  scores, positions: [q, k'] with k' <= k from a backend, where a slot is missing when
  its score is NaN (ScaNN's padding) or its position is negative or >= len(ids);
  columns k'..k-1 are appended as missing. ids: [count] item id of each position."""
  scores = np.asarray(scores, np.float32)  # [q, k']
  positions = np.asarray(positions).astype(np.int64)  # [q, k']
  missing = np.isnan(scores) | (positions < 0) | (positions >= len(ids))
  out_ids = np.where(missing, MISSING_ID, ids[np.where(missing, 0, positions)] if len(ids)
                     else MISSING_ID)
  out_scores = np.where(missing, MISSING_SCORE, scores).astype(np.float32)
  pad = k - scores.shape[1]
  if pad:
    out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=MISSING_ID)
    out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=MISSING_SCORE)
  return out_scores, out_ids.astype(np.int64)
