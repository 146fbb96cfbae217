"""Reproducible tables of issue 8: one command each, several seeds, cached cells.

  python -m experiments.tables <table> [--quick] [--seeds=N] [--parallel=N]

TABLES maps a name to its `spec.Table` (one module per table); runner.py expands
a table into cells and caches them, report.py and plots.py write the results.
Adding a table: a module with `TABLE = spec.Table(...)`, one line below, and its
quick run is picked up by tests/tables/test_quick.py.
"""

from experiments.tables import (batch_size, encoders, fusion, matching, objectives,
                                retrieval_efficiency, robustness)
from mmalign.registry import Registry

TABLES = Registry("table")
for _module in (fusion, objectives, matching, robustness, encoders,  # Issue 8's numbering.
                batch_size, retrieval_efficiency):
  TABLES.register(_module.TABLE.name)(_module.TABLE)
