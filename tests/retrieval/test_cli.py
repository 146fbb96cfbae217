"""--mode=index and --query_image on a tiny trained workdir, checked against numpy search
over embeddings computed independently of the index; foreign indexes are refused."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign.data import pipeline, sources
from mmalign.errors import UsageError
from mmalign.retrieval import cli, searchers
from mmalign.retrieval import search as search_lib
from mmalign.retrieval.manifest import MANIFEST, IndexMismatchError
from mmalign.train import trainer
from tests.retrieval.reference import numpy_top_k


def _exp(config, workdir):
  return experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)


def _config(data_dir):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("workdir"))
  config = _config(tiny_data_dir)
  trainer.train(experiment_lib.for_training(config, workdir))
  return config, workdir


@pytest.fixture(scope="module")
def embedded(trained):
  """The test split's embeddings, computed without any index: the reference side."""
  config, workdir = trained
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  variables, step = train_state.restore_variables(exp)
  split = pipeline.index_split(sources.open_split(exp.builder, "test", decode_images=False))
  images = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, "test"))
  texts = experiment_lib.embed_texts(exp, variables, split.group_captions)
  return exp, variables, step, split, images, texts


@pytest.fixture(scope="module")
def index_path(trained):
  config, workdir = trained
  return cli.build_index_for_workdir(_exp(config, workdir))


def _query_png(exp, example: int, path, size=None, mode=None) -> np.ndarray:
  pixels = sources.open_split(exp.builder, "test")[example]["image"]  # [h, w, 1]
  image = Image.fromarray(pixels[..., 0])
  if mode:
    image = image.convert(mode)
  if size:
    image = image.resize(size)
  image.save(path)
  return pixels


def test_index_mode_writes_both_galleries_with_provenance(trained, embedded, index_path):
  config, workdir = trained
  exp, _, step, split, images, texts = embedded
  assert index_path == os.path.join(workdir, "scann", f"test_step{step}")
  text_path = index_path + "_text"
  for path, modality, count in ((index_path, "image", len(images)),
                                (text_path, "text", len(texts))):
    with open(os.path.join(path, MANIFEST)) as f:
      manifest = json.load(f)
    assert manifest["count"] == count and manifest["dim"] == config.model.embed_dim
    provenance = manifest["provenance"]
    assert provenance["checkpoint_step"] == step and provenance["split"] == "test"
    assert provenance["modality"] == modality and provenance["dataset"] == "unicode_glyphs/tiny"
    assert provenance["config_hash"] == search_lib.embedding_config_hash(exp)
    assert provenance["tokenizer_sha256"] == exp.tokenizer_sha256()
  text_index = searchers.load_index(text_path)
  np.testing.assert_array_equal(text_index.ids, split.group_ids)  # Item id = group id.


def test_text_to_image_search_uses_the_saved_index(trained, embedded, index_path):
  config, workdir = trained
  exp, variables, step, split, images, _ = embedded
  mtime = os.path.getmtime(os.path.join(index_path, MANIFEST))
  query = split.group_captions[3]
  hits, sheet = search_lib.search(exp, variables, step, query, k=4, split="test",
                                  scann_config=search_lib.scann_config(config))
  assert os.path.getmtime(os.path.join(index_path, MANIFEST)) == mtime  # Loaded, not rebuilt.
  query_emb = experiment_lib.embed_texts(exp, variables, [query])
  expected_scores, expected_ids = numpy_top_k(query_emb, images, 4)
  assert [h.example_index for h in hits] == expected_ids[0].tolist()
  np.testing.assert_allclose([h.score for h in hits], expected_scores[0], atol=1e-5)
  assert os.path.getsize(sheet) > 0


def test_image_query_returns_nearest_captions_and_a_sheet(trained, embedded, index_path,
                                                          tmp_path):
  config, workdir = trained
  exp, variables, _, split, _, texts = embedded
  pixels = _query_png(exp, 5, tmp_path / "glyph five.png")
  hits, sheet = cli.search_image_query(_exp(config, workdir), str(tmp_path / "glyph five.png"), k=6)
  query_emb = experiment_lib.embed_image_array(exp, variables, exp.normalization(pixels[None]))
  expected_scores, expected_ids = numpy_top_k(query_emb, texts, 6, split.group_ids)
  assert [h.item_id for h in hits] == expected_ids[0].tolist()
  np.testing.assert_allclose([h.score for h in hits], expected_scores[0], atol=1e-5)
  for hit in hits:  # Each hit names its group's caption and an example of that group.
    row = int(np.searchsorted(split.group_ids, hit.item_id))
    assert hit.caption == split.group_captions[row]
    assert split.groups[hit.example_index] == hit.item_id
  assert sheet == os.path.join(workdir, "search_image_glyph_five.png")
  with Image.open(sheet) as image:
    assert image.format == "PNG"


def test_image_query_of_other_size_and_mode_is_converted(trained, embedded, index_path,
                                                         tmp_path):
  config, workdir = trained
  exp = embedded[0]
  _query_png(exp, 2, tmp_path / "big.png", size=(50, 40), mode="RGB")
  hits, _ = cli.search_image_query(_exp(config, workdir), str(tmp_path / "big.png"), k=100)
  assert len(hits) == len(embedded[5])  # k above the gallery: every caption, no padding.
  assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_bad_query_image_is_named(trained, index_path, tmp_path):
  config, workdir = trained
  with pytest.raises(UsageError, match="--query_image.*not a file"):
    cli.search_image_query(_exp(config, workdir), str(tmp_path / "missing.png"))
  (tmp_path / "text.png").write_text("not an image")
  with pytest.raises(UsageError, match="--query_image.*not a readable image"):
    cli.search_image_query(_exp(config, workdir), str(tmp_path / "text.png"))


def test_index_of_another_config_or_searcher_is_refused(trained, embedded, index_path,
                                                        tmp_path):
  config, workdir = trained
  pixels_path = tmp_path / "q.png"
  _query_png(embedded[0], 1, pixels_path)
  other = _config(config.data.data_dir)
  other.data.image_mean = (0.5,)  # Changes the embeddings, not the checkpoint.
  with pytest.raises(IndexMismatchError, match="another model or config.*config_hash"):
    cli.search_image_query(_exp(other, workdir), str(pixels_path))
  other = _config(config.data.data_dir)
  other.retrieval.searcher = "exact"
  with pytest.raises(IndexMismatchError, match="'scann' index but the config asks for 'exact'"):
    cli.search_image_query(_exp(other, workdir), str(pixels_path))
  # A hand-edited manifest from another checkpoint is refused too.
  manifest_path = os.path.join(index_path + "_text", MANIFEST)
  with open(manifest_path) as f:
    manifest = json.load(f)
  manifest["provenance"]["checkpoint_step"] = 99
  with open(manifest_path, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(IndexMismatchError, match="checkpoint_step: index has 99, expected 6"):
    cli.search_image_query(_exp(config, workdir), str(pixels_path))
  # --mode=index rebuilds, after which the search works again.
  cli.build_index_for_workdir(_exp(config, workdir))
  assert cli.search_image_query(_exp(config, workdir), str(pixels_path), k=2)[0]


def test_exact_searcher_from_the_config(trained, tiny_data_dir, tmp_path):
  _, workdir = trained
  config = _config(tiny_data_dir)
  config.retrieval.searcher = "exact"
  # A copy of the workdir without its indexes, so the exact ones are built there.
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("scann"))
  path = cli.build_index_for_workdir(_exp(config, copy))
  assert searchers.load_index(path).name == "exact"
  with pytest.raises(UsageError, match="retrieval.searcher='annoy'.*'exact', 'scann'"):
    config.retrieval.searcher = "annoy"
    cli.build_index_for_workdir(_exp(config, copy))
