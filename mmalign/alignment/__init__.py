"""Closed-form alignment of frozen embedding spaces (no training): numpy only.

Baselines for the trained objectives of `mmalign/losses`.
"""

from mmalign.alignment.procrustes import (
    ProcrustesMap,
    fit_procrustes_map,
    orthogonal_procrustes,
)

__all__ = ["ProcrustesMap", "fit_procrustes_map", "orthogonal_procrustes"]
