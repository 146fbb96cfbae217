"""Matchers by name, so a config or eval can pick one with a string.

Every entry maps scores [n, m] to matches [n] int (-1 = unmatched) with default
settings; call the functions directly to tune e.g. Sinkhorn's epsilon.
"""

from __future__ import annotations

from collections.abc import Callable

from mmalign.matching.assignment import linear_assignment
from mmalign.matching.neighbours import mutual_nearest_neighbours, nearest_neighbour
from mmalign.matching.sinkhorn import sinkhorn_matching
from mmalign.registry import Registry

Matcher = Callable[..., object]

MATCHERS: Registry[Matcher] = Registry("matching method")
MATCHERS.register("nearest")(nearest_neighbour)
MATCHERS.register("mutual")(mutual_nearest_neighbours)
MATCHERS.register("hungarian")(linear_assignment)
MATCHERS.register("sinkhorn")(sinkhorn_matching)
