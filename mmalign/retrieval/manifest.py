"""The manifest of a saved index: what it holds, what it was built from, and checksums.

An index is only useful with the model that made its embeddings, so the manifest records
their `Provenance` and loading refuses a mismatch with the reason, instead of returning
neighbours from another embedding space. Every file is listed by relative path with its
sha256, so a moved directory loads and a changed file is caught before any backend reads
it. Nothing in an index directory is ever unpickled (JSON, `.npy` without pickle)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from importlib import metadata
from typing import Any

from mmalign import utils
from mmalign.errors import UsageError

MANIFEST = "manifest.json"
FORMAT = "mmalign.retrieval.index/1"
NORMALISATION = "l2: gallery and query rows scaled to unit norm"
METRIC = "cosine (dot product of unit rows)"
_VERSIONED = ("scann", "numpy", "jax", "jaxlib", "mmalign")


class IndexFileError(UsageError):
  """An index directory is missing, incomplete, corrupted or of an unknown format."""


class IndexMismatchError(UsageError):
  """A saved index was built for another model, config, split or embedding width."""


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Where the indexed embeddings came from; None fields are unknown (a raw array).

  config_hash: of the settings that determine the embeddings (`search.embedding_config_hash`);
  modality: "image" or "text"; item_key: what an item id names, e.g. "example index in
  unicode_glyphs/tiny:test"."""
  checkpoint_step: int | None = None
  config_hash: str | None = None
  tokenizer_sha256: str | None = None
  dataset: str | None = None
  split: str | None = None
  modality: str | None = None
  item_key: str | None = None

  def mismatches(self, expected: "Provenance") -> list[str]:
    """'field: index has X, expected Y' for every field `expected` sets, except item_key:
    it describes ids, not the embedding space."""
    return [f"{f.name}: index has {getattr(self, f.name)!r}, expected {want!r}"
            for f in dataclasses.fields(self) if f.name != "item_key"
            and (want := getattr(expected, f.name)) is not None and want != getattr(self, f.name)]


def library_versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for name in _VERSIONED:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


def sha256_of(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _files_of(directory: str) -> list[str]:
  """Relative paths of every file under directory except the manifest, sorted."""
  paths = (os.path.relpath(os.path.join(root, name), directory)
           for root, _, names in os.walk(directory) for name in names)
  return sorted(rel.replace(os.sep, "/") for rel in paths if rel != MANIFEST)


def write(directory: str, manifest: dict[str, Any]) -> None:
  """Adds format, versions and every file's checksum, then writes the manifest atomically,
  last, so a manifest marks a complete index directory."""
  manifest = {"format": FORMAT, **manifest, "versions": library_versions(),
              "files": {rel: {"sha256": sha256_of(os.path.join(directory, rel)),
                              "bytes": os.path.getsize(os.path.join(directory, rel))}
                        for rel in _files_of(directory)}}
  utils.write_json(os.path.join(directory, MANIFEST), manifest)


def read(directory: str, *, verify: bool = True) -> dict[str, Any]:
  """Parses the manifest; with verify, checks every listed file's size and sha256."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise IndexFileError(f"no {MANIFEST} in {directory!r}: not a saved index (or its save "
                         "did not finish)")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IndexFileError(f"{path} is not valid JSON ({e}); the index is corrupted") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise IndexFileError(f"{path} has format {found!r}, expected {FORMAT!r}; rebuild the index")
  if problem := _shape_problem(manifest):
    raise IndexFileError(f"{path} is malformed: {problem}; rebuild the index")
  for rel, entry in manifest["files"].items():
    if os.path.isabs(rel) or ".." in rel.split("/"):
      raise IndexFileError(f"{path} lists {rel!r}, which is outside the index directory")
    file_path = os.path.join(directory, rel)
    if not os.path.isfile(file_path):
      raise IndexFileError(f"{directory!r} lacks {rel}, which its manifest lists")
    if verify:
      size = os.path.getsize(file_path)
      digest = sha256_of(file_path) if size == entry["bytes"] else None
      if digest != entry["sha256"]:
        raise IndexFileError(
            f"checksum mismatch for {rel} in {directory!r}: the file changed or is corrupted "
            f"(manifest: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}…; found "
            f"{size} bytes{f', sha256 {digest[:12]}…' if digest else ''}); rebuild the index")
  return manifest


_FIELDS = {"searcher": str, "dim": int, "count": int, "provenance": dict, "params": dict,
           "files": dict}  # The keys `read` and `Index.load` rely on, with their types.


def _type_name(value) -> str:
  return "null" if value is None else type(value).__name__


def _shape_problem(manifest: dict[str, Any]) -> str | None:
  """What is missing or mistyped in a parsed manifest (None: nothing), for one line: named
  up front, rather than failing as a KeyError or TypeError somewhere inside loading."""
  for key, kind in _FIELDS.items():
    if key not in manifest:
      return f"it lacks key {key!r}"
    if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
      return f"{key!r} must be a{'n' if kind is int else ''} {kind.__name__}, got " \
             f"{_type_name(manifest[key])}"
  if manifest["dim"] < 1 or manifest["count"] < 0:
    return f"'dim' must be >= 1 and 'count' must be >= 0, got {manifest['dim']} and " \
           f"{manifest['count']}"
  if not isinstance(manifest.get("tuning"), (dict, type(None))):
    return f"'tuning' must be a dict or null, got {_type_name(manifest['tuning'])}"
  known = [field.name for field in dataclasses.fields(Provenance)]
  unknown = sorted(set(manifest["provenance"]) - set(known))
  if unknown:
    return f"unknown provenance field(s) {unknown}; known: {', '.join(known)}"
  for rel, entry in manifest["files"].items():
    if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int)):
      return f"files entry {rel!r} must be {{'sha256': str, 'bytes': int}}, got {entry!r:.80}"
  return None


def check_expected(manifest: dict[str, Any], directory: str, *, dim: int | None,
                   expect: Provenance | None) -> None:
  """Refuses an index whose width or provenance differs from what the caller has."""
  reasons = []
  if dim is not None and manifest["dim"] != dim:
    reasons.append(f"dim: index holds {manifest['dim']}-dim embeddings, the queries are "
                   f"{dim}-dim")
  if expect is not None:
    reasons += Provenance(**manifest["provenance"]).mismatches(expect)
  if reasons:
    raise IndexMismatchError(f"index {directory!r} was built for another model or config "
                             f"({'; '.join(reasons)}); rebuild it (--mode=index)")
