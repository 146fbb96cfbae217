"""Published checkpoints' tokenizers against their reference implementations.

Fixtures: tests/fixtures/pretrained/generate.py (CLIP's BPE cut to its first 4,000 merges,
as open_clip's `SimpleTokenizer` reads it and as a Hugging Face `CLIPTokenizer`; both
references' ids on strings with accents, emoji, CJK, HTML entities, curly quotes, very long
and empty text, at context lengths 77 and 8). CI needs neither open_clip nor transformers.
"""

import json
import os

import numpy as np
import pytest

from mmalign.data import pretrained_tokenizer
from mmalign.data.pretrained_tokenizer import PretrainedTokenizer
from mmalign.errors import UsageError

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pretrained")
BPE = os.path.join(FIXTURES, "clip_bpe_4k.txt.gz")
HF_FOLDER = os.path.join(FIXTURES, "hf_clip_tokenizer")


@pytest.fixture(scope="module")
def reference():
  with open(os.path.join(FIXTURES, "clip_tokenizer_ids.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.parametrize("context", [77, 8])
def test_open_clip_bpe_gives_open_clips_ids(reference, context):
  """open_clip's SimpleTokenizer: ftfy, HTML unescaping, start/end tokens, truncation that
  keeps the end token, zero padding; every id equal."""
  ids = pretrained_tokenizer.from_path(BPE, context).encode(reference["strings"])
  np.testing.assert_array_equal(ids, np.array(reference[f"open_clip_{context}"]))


@pytest.mark.parametrize("context", [77, 8])
def test_a_hugging_face_tokenizer_gives_its_ids(reference, context):
  """A CLIPTokenizer folder: its ids where its attention mask is 1, then zero padding (its
  own pad id is the end token; `clip_text` reads up to the first end token either way)."""
  ids = pretrained_tokenizer.from_path(HF_FOLDER, context).encode(reference["strings"])
  expected = np.array(reference[f"hf_{context}"]) * np.array(reference[f"hf_{context}_mask"])
  np.testing.assert_array_equal(ids, expected)


def test_the_references_differ_where_ftfy_and_html_unescaping_act(reference):
  """The two references are not interchangeable: open_clip unescapes HTML and uncurls quotes,
  Hugging Face's tokenizer does not. Both are matched above."""
  differ = [s for s, a, b, mask in zip(reference["strings"], reference["open_clip_77"],
                                       reference["hf_77"], reference["hf_77_mask"])
            if list(np.array(a)[np.array(mask, bool)]) != list(np.array(b)[np.array(mask, bool)])
            or sum(mask) != np.count_nonzero(a)]
  assert len(differ) == 2 and "&amp;" in differ[0] and "\u201c" in differ[1]


def test_saved_and_loaded_it_encodes_the_same(tmp_path, reference):
  for path, cleaning in ((BPE, "open_clip"), (HF_FOLDER, "none")):
    tokenizer = pretrained_tokenizer.from_path(path, 16)
    tokenizer.save(str(tmp_path / cleaning))
    assert PretrainedTokenizer.exists(str(tmp_path / cleaning))
    loaded = PretrainedTokenizer.load(str(tmp_path / cleaning))
    assert loaded.model_proto == tokenizer.model_proto and loaded.settings == tokenizer.settings
    np.testing.assert_array_equal(loaded.encode(reference["strings"]),
                                  tokenizer.encode(reference["strings"]))
    assert loaded.vocab_size == 4514 and loaded.vocabulary()[4513] in ("<end_of_text>",
                                                                      "<|endoftext|>")


def test_bad_paths_give_one_line_errors(tmp_path):
  with pytest.raises(UsageError, match="does not exist"):
    pretrained_tokenizer.from_path(str(tmp_path / "missing.json"), 8)
  with pytest.raises(UsageError, match="the folder holds no tokenizer.json"):
    pretrained_tokenizer.from_path(str(tmp_path), 8)
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(UsageError, match=r"bad\.json' cannot be read: "):
    pretrained_tokenizer.from_path(str(bad), 8)
  merges = tmp_path / "merges.txt"
  merges.write_text("#version\na b c\n")
  with pytest.raises(UsageError, match="not a BPE merges file"):
    pretrained_tokenizer.from_path(str(merges), 8)
  other = tmp_path / "vocab.bin"
  other.write_bytes(b"x")
  with pytest.raises(UsageError, match="expected a tokenizer.json"):
    pretrained_tokenizer.from_path(str(other), 8)
  not_sentencepiece = tmp_path / "spiece.model"
  not_sentencepiece.write_bytes(b"x")
  with pytest.raises(UsageError, match=r"spiece\.model' cannot be read: "):
    pretrained_tokenizer.from_path(str(not_sentencepiece), 8)
