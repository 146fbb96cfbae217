"""Published weights into mmalign models: one importer per format (importers.py)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Imported:
  """What an importer read: parameter path → array, source tensors left unused, notes."""
  arrays: dict[str, np.ndarray]
  ignored: tuple[str, ...] = ()
  notes: tuple[str, ...] = ()
