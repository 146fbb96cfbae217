"""Cross-modal matching from a similarity matrix scores [n, m] (higher = more similar).

Every matcher returns [n] int: the matched column of each row, -1 when unmatched.
"""

from mmalign.matching.assignment import linear_assignment
from mmalign.matching.metrics import matching_accuracy
from mmalign.matching.neighbours import (
    UNMATCHED,
    mutual_nearest_neighbours,
    nearest_neighbour,
)
from mmalign.matching.registry import MATCHERS
from mmalign.matching.sinkhorn import log_marginals, sinkhorn, sinkhorn_matching

__all__ = [
    "MATCHERS", "UNMATCHED", "linear_assignment", "log_marginals", "matching_accuracy",
    "mutual_nearest_neighbours", "nearest_neighbour", "sinkhorn", "sinkhorn_matching",
]
