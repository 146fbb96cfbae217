"""Reproducible tables: one command each, several seeds, cached cells.

  python -m experiments.tables <table> [--quick] [--seeds=N] [--parallel=N]

TABLES maps a name to its `spec.Table`. Adding a table: a module with
`TABLE = spec.Table(...)` and one entry below; tests/tables/test_quick.py runs its quick grid.
"""

from experiments.tables import (batch_size, encoders, fusion, matching, objectives,
                                retrieval_efficiency, robustness)
from mmalign.registry import Registry

TABLES = Registry("table")
for _module in (fusion, objectives, matching, robustness, encoders,  # Issue 8's numbering.
                batch_size, retrieval_efficiency):
  TABLES.register(_module.TABLE.name)(_module.TABLE)
