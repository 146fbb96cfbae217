"""Retrieval over embedding galleries: indexes, their files, and workdir search.

  vectors.py        input checks (float32, unit rows, NaN/inf named) and missing results
  base.py           `Index`: ids, search, upsert/delete, save/load; `SEARCHERS` registry
  scann_index.py    "scann": ScaNN tree + AH + reorder (brute force for small galleries)
  exact_index.py    "exact": tiled exact top-k from kernels.api
  searchers.py      build_index(name, ...) / load_index(directory, ...)
  manifest.py       manifest, provenance, checksums; refusals of foreign indexes
  tuning.py         tune(): ScaNN knobs for a recall target against exact ground truth
  search.py         text→image and image→text search of a trained workdir
  cli.py            what launch.py's --mode=index and --query_image do
  contact_sheet.py  PNG of the hits
"""
