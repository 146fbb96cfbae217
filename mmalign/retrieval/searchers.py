"""Choose a searcher by name and load any saved index: the entry points callers use.

"scann" and "exact" share the `Index` API, so a config string switches between them;
`load_index` reads the name from the manifest."""

from __future__ import annotations

import os

from mmalign.retrieval import exact_index, manifest as manifest_lib, scann_index
from mmalign.retrieval.base import SEARCHERS, Index
from mmalign.retrieval.manifest import Provenance

DISPLAY_NAMES = {"scann": "ScaNN", "exact": "Exact index"}  # As reports print them.


def build_index(name: str, embeddings, config=None, *, ids=None,
                provenance: Provenance = Provenance()) -> Index:
  """Builds searcher `name` over embeddings [n, d]; config: that searcher's config class."""
  return SEARCHERS.get(name, config_key="retrieval.searcher").build(
      embeddings, config, ids=ids, provenance=provenance)


def load_index(directory: str | os.PathLike, *, dim: int | None = None,
               expect: Provenance | None = None, verify: bool = True) -> Index:
  """Loads whatever searcher saved `directory` (see `Index.load` for the checks)."""
  manifest = manifest_lib.read(os.fspath(directory), verify=False)
  return SEARCHERS.get(manifest["searcher"]).load(directory, dim=dim, expect=expect, verify=verify)


__all__ = ["SEARCHERS", "DISPLAY_NAMES", "build_index", "load_index", "Index", "Provenance",
           "exact_index", "scann_index"]
