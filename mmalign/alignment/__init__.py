"""Closed-form alignment of frozen embedding spaces (no training): numpy only.

The trained objectives live in `mmalign/losses`; these are the baselines they are
compared with (`experiments/procrustes_baseline.py`).
"""

from mmalign.alignment.procrustes import (
    ProcrustesMap,
    fit_procrustes_map,
    orthogonal_procrustes,
)

__all__ = ["ProcrustesMap", "fit_procrustes_map", "orthogonal_procrustes"]
