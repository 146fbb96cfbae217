"""SentencePiece tokenizer: shapes, padding, normalisation, determinism, save/load."""

import os
import unicodedata

import numpy as np
import pytest

from mmalign.data.tokenizer import PAD_ID, UNK_ID, TextSettings, Tokenizer

CAPTIONS = [
    "LATIN SMALL LETTER A WITH GRAVE",
    "latin small letter e with acute",
    "Latin Capital Letter O With Diaeresis",
    "latin capital letter c with cedilla",
    "latin small letter n with tilde",
    "greek small letter alpha",
    "greek capital letter omega",
    "multiplication sign",
    "division sign",
    "latin small letter u with circumflex",
]
SETTINGS = TextSettings(vocab_size=64, max_length=8, model_type="bpe")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
  return Tokenizer.train(CAPTIONS, SETTINGS)


def test_encode_gives_int32_rows_of_max_length(tokenizer):
  ids = tokenizer.encode(CAPTIONS[:4])
  assert ids.dtype == np.int32
  assert ids.shape == (4, SETTINGS.max_length)
  assert ids.min() >= 0 and ids.max() < tokenizer.vocab_size


def test_encode_of_empty_list_has_zero_rows(tokenizer):
  assert tokenizer.encode([]).shape == (0, SETTINGS.max_length)


def test_padding_only_at_the_end(tokenizer):
  ids = tokenizer.encode(["division sign", "greek small letter alpha", "sign"])
  for row in ids:
    valid = row != PAD_ID
    assert valid[0]
    count = valid.sum()
    assert valid[:count].all() and not valid[count:].any(), row


def test_short_caption_matches_its_pieces(tokenizer):
  text = "division sign"
  pieces = tokenizer.pieces(text)
  assert 0 < len(pieces) < SETTINGS.max_length
  row = tokenizer.encode([text])[0]
  assert (row != PAD_ID).sum() == len(pieces)
  assert (row[len(pieces):] == PAD_ID).all()


def test_long_caption_is_truncated_to_its_first_tokens(tokenizer):
  text = " ".join(["latin small letter a with grave"] * 4)
  pieces = tokenizer.pieces(text)
  assert len(pieces) > SETTINGS.max_length
  long_row = tokenizer.encode([text])[0]
  assert (long_row != PAD_ID).all()
  # The first max_length tokens equal those of the untruncated encoding.
  wide = Tokenizer(tokenizer._model_proto,  # pylint: disable=protected-access
                   TextSettings(vocab_size=64, max_length=64, model_type="bpe"))
  np.testing.assert_array_equal(long_row, wide.encode([text])[0][:SETTINGS.max_length])


def test_normalize_lowercases_and_applies_nfkc(tokenizer):
  full_width = "ＬＡＴＩＮ"
  assert unicodedata.normalize("NFKC", full_width) == "LATIN"  # The premise.
  assert tokenizer.normalize(full_width) == "latin"
  assert tokenizer.normalize("Greek ﬁ") == "greek fi"  # NFKC splits the ligature.


def test_encode_applies_the_same_normalization(tokenizer):
  np.testing.assert_array_equal(tokenizer.encode(["ＬＡＴＩＮ ＳＭＡＬＬ ＬＥＴＴＥＲ"]),
                                tokenizer.encode(["latin small letter"]))
  np.testing.assert_array_equal(tokenizer.encode(["GREEK CAPITAL LETTER OMEGA"]),
                                tokenizer.encode(["greek capital letter omega"]))


def test_training_normalizes_captions(tokenizer):
  """Upper-case training captions must not produce upper-case pieces."""
  vocab = [tokenizer._processor.id_to_piece(i)  # pylint: disable=protected-access
           for i in range(tokenizer.vocab_size)]
  assert not any(piece.isupper() for piece in vocab if piece not in ("<pad>", "<unk>"))


def test_known_words_do_not_map_to_unknown(tokenizer):
  ids = tokenizer.encode(["latin small letter"])
  assert UNK_ID not in ids


def test_without_normalization_case_is_kept():
  settings = TextSettings(vocab_size=64, max_length=8, model_type="bpe", lowercase=False,
                          unicode_normalization="none")
  plain = Tokenizer.train(CAPTIONS, settings)
  assert plain.normalize("ＬＡＴＩＮ Ab") == "ＬＡＴＩＮ Ab"


def test_training_is_deterministic(tokenizer):
  again = Tokenizer.train(list(reversed(CAPTIONS)), SETTINGS)
  assert again._model_proto == tokenizer._model_proto  # pylint: disable=protected-access
  np.testing.assert_array_equal(again.encode(CAPTIONS), tokenizer.encode(CAPTIONS))


def test_training_on_nothing_fails():
  with pytest.raises(ValueError, match="zero captions"):
    Tokenizer.train([], SETTINGS)


def test_save_load_round_trip(tokenizer, tmp_path):
  tokenizer.save(str(tmp_path))
  assert Tokenizer.exists(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer.model"]  # No temp files.
  loaded = Tokenizer.load(str(tmp_path))
  assert loaded.settings == tokenizer.settings
  queries = CAPTIONS + ["ＬＡＴＩＮ capital", "unseen zzz words"]
  np.testing.assert_array_equal(loaded.encode(queries), tokenizer.encode(queries))


def test_load_of_empty_directory_raises(tmp_path):
  assert not Tokenizer.exists(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tokenizer.model"):
    Tokenizer.load(str(tmp_path))
