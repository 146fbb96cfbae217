"""The tokenizer a published checkpoint was trained with, ids exactly as the reference's.

`init.tokenizer` (or a Hugging Face folder given as `init.checkpoint`) names it: a
`tokenizer.json` of Hugging Face `tokenizers` (a folder holding one), or open_clip's BPE
merges file (`bpe_simple_vocab_16e6.txt.gz`, also OpenAI CLIP's). Either becomes one
`tokenizers.Tokenizer` plus the text cleaning its reference applies before it: open_clip's
(ftfy, HTML unescaping, whitespace, lower case), or none for a `tokenizer.json`, whose own
normaliser does it. Why the `tokenizers` library: it is Hugging Face's own implementation, so
a `tokenizer.json` gives its ids by construction, and its BPE is the same algorithm as
open_clip's pure-Python one. Like the trained tokenizer, it is saved in the workdir, so
evaluation and search read captions exactly as training did.
"""

from __future__ import annotations

import gzip
import html
import json
import os
from collections.abc import Iterable

import numpy as np

from mmalign import utils
from mmalign.data.tokenizer import PAD_ID, TextSettings
from mmalign.errors import UsageError

FILE = "pretrained_tokenizer.json"
HF_FILE = "tokenizer.json"
# The text cleaning each reference applies before tokenizing.
CLEANINGS = ("none", "open_clip")
# open_clip's pre-tokenizer pattern (OpenAI CLIP's): its special tokens, contractions, letter
# runs, single digits, runs of other non-space characters.
OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
OPEN_CLIP_PATTERN = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                     r"[^\s\p{L}\p{N}]+")
OPEN_CLIP_MERGES = 49152 - 256 - 2  # open_clip reads at most this many merges.


class PretrainedTokenizer:
  """Captions → token ids `[n, max_length]` int32: the reference's start and end tokens,
  truncated to `max_length` with the end token kept (as open_clip and Hugging Face do),
  then padded with PAD_ID (0; `clip_text` reads up to the end token only)."""

  def __init__(self, tokenizer_json: str, cleaning: str, max_length: int):
    import tokenizers  # pylint: disable=import-outside-toplevel
    if cleaning not in CLEANINGS:
      raise ValueError(f"tokenizer cleaning {cleaning!r} is not one of {list(CLEANINGS)}")
    self._json, self._cleaning = tokenizer_json, cleaning
    self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    self._tokenizer.no_padding()
    self._tokenizer.enable_truncation(max_length)
    self.settings = TextSettings(vocab_size=self._tokenizer.get_vocab_size(),
                                 max_length=max_length, lowercase=False,
                                 unicode_normalization="none", model_type="pretrained")

  @property
  def vocab_size(self) -> int:
    return self.settings.vocab_size

  @property
  def model_proto(self) -> bytes:
    """The tokenizer and its cleaning, serialised: what `save` writes (and run meta hashes)."""
    return json.dumps({"cleaning": self._cleaning, "tokenizer": self._json}).encode("utf-8")

  def normalize(self, text: str) -> str:
    if self._cleaning == "open_clip":
      import ftfy  # pylint: disable=import-outside-toplevel
      text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
      return " ".join(text.split()).lower()
    return text

  def encode(self, texts: Iterable[str]) -> np.ndarray:
    encodings = self._tokenizer.encode_batch([self.normalize(t) for t in texts])
    out = np.full((len(encodings), self.settings.max_length), PAD_ID, np.int32)
    for row, encoding in zip(out, encodings):
      row[:len(encoding.ids)] = encoding.ids
    return out

  def vocabulary(self) -> list[str]:
    """Every token, in id order."""
    by_id = {i: token for token, i in self._tokenizer.get_vocab(with_added_tokens=True).items()}
    return [by_id.get(i, "") for i in range(self.vocab_size)]

  def pieces(self, text: str) -> list[str]:
    return self._tokenizer.encode(self.normalize(text), add_special_tokens=False).tokens

  def save(self, directory: str) -> None:
    """The settings, then the tokenizer (what `exists` checks), each atomically."""
    os.makedirs(directory, exist_ok=True)
    from mmalign.data.tokenizer import SETTINGS_FILE  # pylint: disable=import-outside-toplevel
    utils.write_json(os.path.join(directory, SETTINGS_FILE), {"max_length":
                                                              self.settings.max_length})
    utils.write_atomic(os.path.join(directory, FILE), self.model_proto)

  @classmethod
  def load(cls, directory: str) -> "PretrainedTokenizer":
    from mmalign.data.tokenizer import SETTINGS_FILE  # pylint: disable=import-outside-toplevel
    with open(os.path.join(directory, FILE), encoding="utf-8") as f:
      saved = json.load(f)
    with open(os.path.join(directory, SETTINGS_FILE), encoding="utf-8") as f:
      max_length = json.load(f)["max_length"]
    return cls(saved["tokenizer"], saved["cleaning"], max_length)

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, FILE))


def from_path(path: str, max_length: int) -> PretrainedTokenizer:
  """The tokenizer at `path`: a `tokenizer.json`, a folder holding one, or open_clip's BPE
  merges (`.txt.gz` or `.txt`). Raises UsageError naming the path otherwise."""
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, HF_FILE)):
      raise UsageError(f"init.tokenizer {path!r}: the folder holds no {HF_FILE}")
    path = os.path.join(path, HF_FILE)
  if not os.path.exists(path):
    raise UsageError(f"init.tokenizer {path!r} does not exist")
  try:
    if path.endswith(".json"):
      with open(path, encoding="utf-8") as f:
        text = f.read()
      return PretrainedTokenizer(text, "none", max_length)
    if path.endswith((".txt.gz", ".txt")):
      return PretrainedTokenizer(open_clip_bpe(path), "open_clip", max_length)
  except Exception as error:  # pylint: disable=broad-except  (tokenizers raises Exception)
    raise UsageError(f"init.tokenizer {path!r} cannot be read: "
                     f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                     ) from None
  raise UsageError(f"init.tokenizer {path!r}: expected a tokenizer.json, a folder holding "
                   "one, or open_clip's BPE merges (.txt.gz)")


def open_clip_bpe(path: str) -> str:
  """open_clip's SimpleTokenizer as a `tokenizer.json` string: its vocabulary (the 256 byte
  symbols, each again with the end-of-word mark `</w>`, one token per merge, then its start
  and end tokens) and merge ranks, read from the merges file as it reads them."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, models, pre_tokenizers, processors
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    lines = f.read().decode("utf-8").split("\n")
  merges = [tuple(line.split()) for line in lines[1:OPEN_CLIP_MERGES + 1]]
  if any(len(merge) != 2 for merge in merges):
    raise ValueError("not a BPE merges file: every line after the first must hold two symbols")
  symbols = list(_bytes_to_unicode().values())
  vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
  vocab += list(OPEN_CLIP_SPECIALS)
  tokenizer = tokenizers.Tokenizer(models.BPE(
      {token: i for i, token in enumerate(vocab)}, merges, continuing_subword_prefix="",
      end_of_word_suffix="</w>", fuse_unk=False))
  tokenizer.add_special_tokens(list(OPEN_CLIP_SPECIALS))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(OPEN_CLIP_PATTERN), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  start, end = OPEN_CLIP_SPECIALS
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{start} $A {end}", special_tokens=[(start, len(vocab) - 2), (end, len(vocab) - 1)])
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer.to_str()


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte → printable character table, which CLIP's BPE symbols use, in
  its order: the printable Latin-1 bytes as themselves, then the rest as 256 + n."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  others = [byte for byte in range(256) if byte not in printable]
  return {**{byte: chr(byte) for byte in printable},
          **{byte: chr(256 + n) for n, byte in enumerate(others)}}
