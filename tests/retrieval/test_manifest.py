"""Saved indexes: moved directories load, mismatches and corruption are refused, no pickle."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from mmalign.errors import UsageError
from mmalign.retrieval import searchers
from mmalign.retrieval.manifest import (FORMAT, MANIFEST, IndexFileError, IndexMismatchError,
                                        Provenance)
from mmalign.retrieval.scann_index import ScannConfig, ScannIndex
from tests.retrieval.reference import clustered

PROVENANCE = Provenance(checkpoint_step=6, config_hash="c0ffee", tokenizer_sha256="ab12",
                        dataset="unicode_glyphs/tiny", split="test", modality="image",
                        item_key="example index in unicode_glyphs/tiny:test")


def _saved(tmp_path, name="scann", num=300, config=None):
  gallery, queries = clustered(3, num=num, num_queries=64)
  ids = np.arange(num) * 3 + 5
  index = searchers.build_index(name, gallery, config, ids=ids, provenance=PROVENANCE)
  directory = index.save(tmp_path / "index")
  return index, queries, directory


@pytest.mark.parametrize("name, num", [("scann", 300), ("scann", 5000), ("exact", 300)])
def test_save_move_load_gives_identical_results(tmp_path, name, num):
  config = ScannConfig(num_neighbors=7, reorder=50) if name == "scann" else None
  index, queries, directory = _saved(tmp_path, name, num, config)
  scores, found = index.search(queries)
  shutil.copytree(directory, tmp_path / "moved")
  shutil.rmtree(directory)  # Nothing may still point at the old path.
  loaded = searchers.load_index(tmp_path / "moved", dim=32, expect=PROVENANCE)
  assert type(loaded) is type(index)
  assert (loaded.dim, loaded.count, loaded.provenance) == (32, num, PROVENANCE)
  np.testing.assert_array_equal(loaded.ids, index.ids)
  assert loaded.params == index.params
  loaded_scores, loaded_found = loaded.search(queries)
  np.testing.assert_array_equal(loaded_found, found)
  np.testing.assert_array_equal(loaded_scores, scores)
  if name == "scann":
    assert loaded.is_brute_force == (num == 300) and loaded.config == config


def test_manifest_records_what_the_issue_asks(tmp_path):
  _, _, directory = _saved(tmp_path, "scann", 5000)
  with open(os.path.join(directory, MANIFEST)) as f:
    manifest = json.load(f)
  assert manifest["format"] == FORMAT and manifest["searcher"] == "scann"
  assert manifest["dim"] == 32 and manifest["count"] == 5000
  assert "unit norm" in manifest["normalisation"] and "cosine" in manifest["metric"]
  assert manifest["provenance"] == {
      "checkpoint_step": 6, "config_hash": "c0ffee", "tokenizer_sha256": "ab12",
      "dataset": "unicode_glyphs/tiny", "split": "test", "modality": "image",
      "item_key": "example index in unicode_glyphs/tiny:test"}
  assert manifest["items"]["ids_file"] == "ids.npy"
  assert manifest["params"]["tree"]["num_leaves"] == 71 and manifest["params"]["reorder"] == 100
  assert {"scann", "numpy", "jax", "python"} <= set(manifest["versions"])
  assert manifest["versions"]["scann"] == "1.4.2"
  assert {"ids.npy", "dataset.npy", "scann_assets.pbtxt"} <= set(manifest["files"])
  assert all(not os.path.isabs(p) for p in manifest["files"])
  with open(os.path.join(directory, "scann_assets.pbtxt")) as f:
    assert directory not in f.read()  # Relative asset paths only.
  assert not any(p.endswith(".pkl") for p in os.listdir(directory))
  np.testing.assert_array_equal(np.load(os.path.join(directory, "ids.npy")),
                                np.arange(5000) * 3 + 5)


@pytest.mark.parametrize("expect, culprit", [
    (Provenance(checkpoint_step=8), "checkpoint_step: index has 6, expected 8"),
    (Provenance(config_hash="beef"), "config_hash: index has 'c0ffee', expected 'beef'"),
    (Provenance(tokenizer_sha256="ff"), "tokenizer_sha256"),
    (Provenance(split="train", modality="text"), "split: .*modality: index has 'image'"),
])
def test_index_of_another_model_is_refused_with_the_reason(tmp_path, expect, culprit):
  _, _, directory = _saved(tmp_path)
  with pytest.raises(IndexMismatchError, match=f"another model or config.*{culprit}"):
    searchers.load_index(directory, expect=expect)
  assert issubclass(IndexMismatchError, UsageError)


def test_query_dim_mismatch_is_refused(tmp_path):
  _, _, directory = _saved(tmp_path)
  with pytest.raises(IndexMismatchError, match="index holds 32-dim embeddings, the queries "
                                               "are 64-dim"):
    searchers.load_index(directory, dim=64)


def test_expected_fields_left_none_are_not_compared(tmp_path):
  _, _, directory = _saved(tmp_path)
  searchers.load_index(directory, expect=Provenance(checkpoint_step=6, item_key="other"))


@pytest.mark.parametrize("victim", ["dataset.npy", "ids.npy", "scann_assets.pbtxt"])
def test_corrupted_file_fails_its_checksum(tmp_path, victim):
  _, _, directory = _saved(tmp_path)
  path = os.path.join(directory, victim)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) - 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(IndexFileError, match=f"checksum mismatch for {victim}"):
    searchers.load_index(directory)


def test_truncated_and_missing_files_are_named(tmp_path):
  _, _, directory = _saved(tmp_path)
  with open(os.path.join(directory, "dataset.npy"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(IndexFileError, match="dataset.npy.*found 100 bytes"):
    searchers.load_index(directory)
  os.remove(os.path.join(directory, "ids.npy"))
  with pytest.raises(IndexFileError, match="lacks ids.npy"):
    searchers.load_index(directory)


class _Trap:
  """Unpickling this writes a file: proof that something unpickled it."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_loading_never_unpickles(tmp_path):
  """ScaNN's own loader unpickles scann_docids.pkl when present; ours must not."""
  _, queries, directory = _saved(tmp_path)
  evidence = tmp_path / "unpickled"
  with open(os.path.join(directory, "scann_docids.pkl"), "wb") as f:
    pickle.dump(_Trap(str(evidence)), f)
  loaded = searchers.load_index(directory, verify=False)  # The extra file is not listed.
  loaded.search(queries)
  assert not evidence.exists()
  np.save(os.path.join(directory, "ids.npy"), np.array([{"a": 1}], dtype=object),
          allow_pickle=True)
  with pytest.raises(ValueError, match="allow_pickle=False"):
    searchers.load_index(directory, verify=False)


def test_assets_naming_unlisted_paths_are_refused(tmp_path):
  _, _, directory = _saved(tmp_path)
  assets = os.path.join(directory, "scann_assets.pbtxt")
  with open(assets) as f:
    text = f.read()
  with open(assets, "w") as f:
    f.write(text.replace('"dataset.npy"', '"/etc/dataset.npy"'))
  with pytest.raises(IndexFileError, match="/etc/dataset.npy.*not a checksummed file"):
    searchers.load_index(directory, verify=False)


def test_missing_or_foreign_manifest(tmp_path):
  with pytest.raises(IndexFileError, match=f"no {MANIFEST}"):
    searchers.load_index(tmp_path)
  (tmp_path / MANIFEST).write_text(json.dumps({"format": "something else"}))
  with pytest.raises(IndexFileError, match="format 'something else'"):
    searchers.load_index(tmp_path)
  (tmp_path / MANIFEST).write_text("{not json")
  with pytest.raises(IndexFileError, match="not valid JSON"):
    searchers.load_index(tmp_path)


def test_wrong_searcher_class_is_named(tmp_path):
  _, _, directory = _saved(tmp_path, "exact")
  with pytest.raises(IndexFileError, match="holds a 'exact' index, not 'scann'"):
    ScannIndex.load(directory)


def test_save_replaces_an_index_but_not_other_directories(tmp_path):
  index, queries, directory = _saved(tmp_path)
  smaller = searchers.build_index("scann", queries[:10])
  smaller.save(directory)  # Replaces the saved index.
  assert searchers.load_index(directory).count == 10
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
  (tmp_path / "precious").mkdir()
  (tmp_path / "precious" / "notes.txt").write_text("keep me")
  with pytest.raises(IndexFileError, match="not a saved index; refusing"):
    index.save(tmp_path / "precious")
  assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def _edit_manifest(directory, edit):
  path = os.path.join(directory, MANIFEST)
  with open(path) as f:
    manifest = json.load(f)
  edit(manifest)
  with open(path, "w") as f:
    json.dump(manifest, f)
  return path


@pytest.mark.parametrize("name", ["scann", "exact"])
@pytest.mark.parametrize("edit, culprit", [
    (lambda m: m.pop("files"), "lacks key 'files'"),
    (lambda m: m.pop("searcher"), "lacks key 'searcher'"),
    (lambda m: m.pop("params"), "lacks key 'params'"),
    (lambda m: m.update(files=["ids.npy"]), "'files' must be a dict, got list"),
    (lambda m: m.update(dim="32"), "'dim' must be an int, got str"),
    (lambda m: m.update(count=True), "'count' must be an int, got bool"),
    (lambda m: m.update(count=-1), "'count' must be >= 0"),
    (lambda m: m.update(searcher=["scann"]), "'searcher' must be a str, got list"),
    (lambda m: m.update(tuning=3), "'tuning' must be a dict or null, got int"),
    (lambda m: m["files"].update({"ids.npy": "abc"}), "files entry 'ids.npy'"),
    (lambda m: m["files"]["ids.npy"].pop("sha256"), "files entry 'ids.npy'"),
    (lambda m: m["provenance"].update(colour="red"), "unknown provenance field"),
    (lambda m: m["params"].pop("config"), "params"),
    (lambda m: m["params"]["config"].update(shoe_size=3), "params"),
    (lambda m: m["params"].update(num_neighbors="ten"), "params"),
])
def test_malformed_manifest_is_one_line_naming_the_file(tmp_path, name, edit, culprit):
  _, queries, directory = _saved(tmp_path, name)
  path = _edit_manifest(directory, edit)
  for load in (lambda: searchers.load_index(directory),
               lambda: searchers.SEARCHERS.get(name).load(directory, verify=False)):
    with pytest.raises(IndexFileError) as excinfo:
      load().search(queries)
    message = str(excinfo.value)
    assert path in message and culprit in message and "\n" not in message, message


@pytest.mark.parametrize("text", ["", "[1, 2]", "null", '{"format": 5}', "\xff\xfe"])
def test_manifest_that_is_not_an_object_is_named(tmp_path, text):
  (tmp_path / MANIFEST).write_bytes(text.encode("latin-1"))
  with pytest.raises(IndexFileError, match=f"{MANIFEST}") as excinfo:
    searchers.load_index(tmp_path)
  assert "\n" not in str(excinfo.value)


def test_scann_params_that_do_not_fit_the_mode_are_named(tmp_path):
  _, queries, directory = _saved(tmp_path, "scann", 5000)
  path = _edit_manifest(directory, lambda m: m["params"].update(tree=None))
  with pytest.raises(IndexFileError, match=f"{path}.*params") as excinfo:
    searchers.load_index(directory).search(queries)
  assert "\n" not in str(excinfo.value)
