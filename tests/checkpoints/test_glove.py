"""GloVe-format word vectors into the text tower's token embedding (`config.init`).

The expected table is built here from the tokenizer's own pieces with numpy; vector values
are multiples of 1/64, exact in float32 and in the text file, so rows compare bitwise.
"""

import os

import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign import settings
from mmalign.checkpoints import glove, importers
from mmalign.data.tokenizer import PAD_ID, UNK_ID
from mmalign.errors import UsageError
from mmalign.train import state as train_state
from mmalign.train import trainer
from mmalign.train.checkpoint import CHECKPOINT_DIR

WIDTH = 32  # tiny's text width.


def _write(path, lines) -> str:
  path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
  return str(path)


def _line(word: str, vector) -> str:
  return " ".join([word, *(repr(float(x)) for x in vector)])


def test_a_word2vec_header_is_skipped_and_the_first_occurrence_wins(tmp_path):
  path = _write(tmp_path / "v.txt", ["3 2", "a 1 2", "b c 3 4.5", "a 5 6"])
  vectors, dim = glove.read_vectors(path)
  assert dim == 2 and set(vectors) == {"a", "b c"}  # A word may hold a space.
  np.testing.assert_array_equal(vectors["a"], np.float32([1, 2]))
  np.testing.assert_array_equal(vectors["b c"], np.float32([3, 4.5]))
  assert set(glove.read_vectors(path, wanted={"a"})[0]) == {"a"}


@pytest.mark.parametrize("lines, named", [
    (["a 1 2", "b 1"], "line 2: expected `word` and 2 numbers"),
    (["a 1 2", "b 1 x"], "line 2: 'b' has a non-numeric value"),
    (["a 1 nan"], "line 1: 'a' has a non-finite value"),
    (["a"], "line 1: expected `word` and some numbers"),
    ([], "holds no vectors"),
])
def test_a_malformed_file_is_refused_naming_the_line(tmp_path, lines, named):
  path = _write(tmp_path / "v.txt", lines)
  with pytest.raises(UsageError, match=named) as error:
    glove.read_vectors(path)
  assert "\n" not in str(error.value)


def test_a_binary_file_is_refused_in_one_line(tmp_path):
  path = tmp_path / "v.txt"
  path.write_bytes(b"a 1 2\n\xff\xfe\x00 3 4\n")
  with pytest.raises(UsageError, match="not UTF-8 text.*init.format"):
    glove.read_vectors(str(path))


@pytest.fixture(scope="module")
def exp(tiny_data_dir, tmp_path_factory):
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  return experiment_lib.for_training(config, str(tmp_path_factory.mktemp("glove")))


def _vectors_for_half_the_words(pieces, width=WIDTH):
  """{word: float32 [width]} for every other distinct piece word, values k/64."""
  rng = np.random.default_rng(0)
  words = sorted({p[1:] for p in pieces if p.startswith("\u2581")} - {""})
  return {w: (rng.integers(-128, 128, width) / 64).astype(np.float32) for w in words[::2]}


def test_each_piece_takes_its_words_vector_and_the_rest_stays(exp, tmp_path):
  pieces = exp.tokenizer.vocabulary()
  vectors = _vectors_for_half_the_words(pieces)
  path = _write(tmp_path / "glove.txt", [_line("notapiece", np.ones(WIDTH)),
                                         *(_line(w, v) for w, v in vectors.items())])
  variables = train_state.variables_of(train_state.init_train_state(exp))
  params = variables["params"]
  loaded, lines = importers.initialise(
      variables, ml_collections.ConfigDict({"checkpoint": path, "format": None}), exp.tokenizer)
  loaded = loaded["params"]

  before = np.asarray(params["text_tower"]["embed"]["embedding"])
  expected = before.copy()
  matched = 0
  for token_id, piece in enumerate(pieces):
    word = piece[1:] if piece.startswith("\u2581") else None
    if token_id not in (PAD_ID, UNK_ID) and word in vectors:
      expected[token_id] = vectors[word]
      matched += 1
  assert 0 < matched < len(pieces)
  inside = [p for p in pieces if not p.startswith("\u2581") and p in vectors]
  assert inside  # A piece inside a word whose text is also a word: it takes no vector.
  np.testing.assert_array_equal(np.asarray(loaded["text_tower"]["embed"]["embedding"]),
                                expected)
  old, new = (traverse_util.flatten_dict(p, sep="/") for p in (params, loaded))
  assert set(old) == set(new)
  for name in old:
    if f"params/{name}" != glove.EMBEDDING:
      np.testing.assert_array_equal(np.asarray(new[name]), np.asarray(old[name]))
  assert lines[0] == f"init from {path} (glove): loaded 1 tensors ({before.size:,} values)"
  assert f"newly initialised: {len(old) - 1} tensors" in lines[1]
  assert f"{matched} of {len(pieces)} tokens took a vector" in lines[2]


def test_vectors_of_another_width_name_the_tensor_and_both_shapes(exp, tmp_path):
  path = _write(tmp_path / "glove.vec", ["a 1 2 3"])
  variables = train_state.variables_of(train_state.init_train_state(exp))
  with pytest.raises(UsageError, match=r"vectors of 3 numbers, but params/text_tower/embed/"
                     rf"embedding has shape \({exp.tokenizer.vocab_size}, {WIDTH}\)"):
    importers.initialise(variables, ml_collections.ConfigDict({"checkpoint": path}),
                         exp.tokenizer)


@pytest.mark.parametrize("name, init, named", [
    ("missing.txt", {"format": None}, "init.checkpoint='.*missing.txt' does not exist"),
    ("vectors.h5", {"format": None}, "cannot tell its format from .h5 suffix; set "
                                      "init.format to one of big_vision"),
    ("vectors.bin", {"format": None}, "is a PyTorch file; convert it to safetensors"),
    ("vectors.txt", {"format": "safetensors"}, "init.format='safetensors' is not allowed"),
])
def test_the_config_is_checked_before_any_work(tmp_path, name, init, named):
  (tmp_path / "vectors.bin").write_text("a 1\n")
  (tmp_path / "vectors.h5").write_text("a 1\n")
  (tmp_path / "vectors.txt").write_text("a 1\n")
  config = tiny.get_config()
  config.init.update({"checkpoint": str(tmp_path / name), **init})
  with pytest.raises(UsageError, match=named):
    settings.check(config)


def test_training_starts_from_the_vectors_once_and_a_resume_does_not_reload(
    tiny_data_dir, tmp_path, capsys):
  """With the table frozen (as in LiT), the trained run still holds the file's vectors."""
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.train.frozen = ("text_tower/embed",)
  workdir = str(tmp_path / "workdir")
  first = experiment_lib.for_training(config, workdir)
  vectors = _vectors_for_half_the_words(first.tokenizer.vocabulary())
  config.init.checkpoint = _write(tmp_path / "glove.txt",
                                  [_line(w, v) for w, v in vectors.items()])
  trainer.train(experiment_lib.for_training(config, workdir), stop_after=3)
  assert capsys.readouterr().out.count("init from") == 1
  state = trainer.train(experiment_lib.for_training(config, workdir))
  out = capsys.readouterr().out
  assert "init from" not in out and "resumed from" in out
  assert sorted(os.listdir(os.path.join(workdir, CHECKPOINT_DIR))) == ["3", "6"]
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  table = np.asarray(state["params"]["text_tower"]["embed"]["embedding"])
  for token_id, piece in enumerate(exp.tokenizer.vocabulary()):
    word = piece[1:] if piece.startswith("\u2581") else None
    if token_id not in (PAD_ID, UNK_ID) and word in vectors:
      np.testing.assert_array_equal(table[token_id], vectors[word])
