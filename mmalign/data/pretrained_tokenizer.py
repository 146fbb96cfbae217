"""The tokenizer a published checkpoint was trained with, ids exactly as the reference's.

`init.tokenizer` (or a Hugging Face folder given as `init.checkpoint`) names it: a
`tokenizer.json` of Hugging Face `tokenizers` (a folder holding one), open_clip's BPE merges
file (`bpe_simple_vocab_16e6.txt.gz`, also OpenAI CLIP's), or SigLIP's SentencePiece model
(`spiece.model`, a folder holding one). The first two become one `tokenizers.Tokenizer`, the
last a SentencePiece processor, each with the text cleaning its reference applies first:
open_clip's (ftfy, HTML unescaping, whitespace, lower case), SigLIP's (lower case, ASCII
punctuation removed, whitespace), or none for a `tokenizer.json`, whose own normaliser does
it. Why these libraries: they are the references' own implementations, so a `tokenizer.json`
or `spiece.model` gives their ids by construction, and `tokenizers`' BPE is the same
algorithm as open_clip's pure-Python one. Like the trained tokenizer, it is saved in the
workdir, so evaluation and search read captions exactly as training did.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import re
import string
from collections.abc import Iterable

import numpy as np

from mmalign import utils
from mmalign.data.tokenizer import PAD_ID, SETTINGS_FILE, TextSettings
from mmalign.errors import UsageError

FILE = "pretrained_tokenizer.json"
HF_FILE, SENTENCEPIECE_FILE = "tokenizer.json", "spiece.model"
# The text cleaning each reference applies before tokenizing.
CLEANINGS = ("none", "open_clip", "siglip")
KINDS = ("tokenizers", "sentencepiece")
# open_clip's pre-tokenizer pattern (OpenAI CLIP's): its special tokens, contractions, letter
# runs, single digits, runs of other non-space characters.
OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
OPEN_CLIP_PATTERN = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                     r"[^\s\p{L}\p{N}]+")
OPEN_CLIP_MERGES = 49152 - 256 - 2  # open_clip reads at most this many merges.


class PretrainedTokenizer:
  """Captions → token ids `[n, max_length]` int32, as the reference makes them.

  A `tokenizers` tokenizer adds the reference's start and end tokens, truncates to
  `max_length` keeping the end token (as open_clip and Hugging Face do) and pads with PAD_ID
  (0; `clip_text` reads up to the end token only). A SentencePiece one (SigLIP's) truncates
  to `max_length - 1` pieces, appends the end token `</s>` and pads with it to `max_length`,
  as transformers' SiglipTokenizer does with `padding="max_length"`: SigLIP's text tower
  reads the last position, so every row has the full length.
  """

  def __init__(self, kind: str, model: str, cleaning: str, max_length: int):
    """model: a tokenizer.json string, or a SentencePiece model's bytes in base64."""
    if kind not in KINDS or cleaning not in CLEANINGS:
      raise ValueError(f"tokenizer kind {kind!r} / cleaning {cleaning!r}: expected one of "
                       f"{list(KINDS)} / {list(CLEANINGS)}")
    self._kind, self._model, self._cleaning = kind, model, cleaning
    if kind == "tokenizers":
      import tokenizers  # pylint: disable=import-outside-toplevel
      self._tokenizer = tokenizers.Tokenizer.from_str(model)
      self._tokenizer.no_padding()
      self._tokenizer.enable_truncation(max_length)
      vocab_size = self._tokenizer.get_vocab_size()
    else:
      import sentencepiece as spm  # pylint: disable=import-outside-toplevel
      self._processor = spm.SentencePieceProcessor(model_proto=base64.b64decode(model))
      self._end = self._processor.eos_id()
      if self._end < 0:
        raise ValueError("the SentencePiece model has no end token (</s>)")
      vocab_size = self._processor.get_piece_size()
    self.settings = TextSettings(vocab_size=vocab_size, max_length=max_length, lowercase=False,
                                 unicode_normalization="none", model_type="pretrained")

  @property
  def vocab_size(self) -> int:
    return self.settings.vocab_size

  @property
  def model_proto(self) -> bytes:
    """The tokenizer and its cleaning, serialised: what `save` writes (and run meta hashes)."""
    return json.dumps({"kind": self._kind, "cleaning": self._cleaning,
                       "tokenizer": self._model}).encode("utf-8")

  def normalize(self, text: str) -> str:
    if self._cleaning == "open_clip":
      import ftfy  # pylint: disable=import-outside-toplevel
      text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
      return " ".join(text.split()).lower()
    if self._cleaning == "siglip":
      text = text.lower().translate(str.maketrans("", "", string.punctuation))
      return re.sub(r"\s+", " ", text).strip()
    return text

  def encode(self, texts: Iterable[str]) -> np.ndarray:
    texts = [self.normalize(t) for t in texts]
    length = self.settings.max_length
    if self._kind == "sentencepiece":
      rows = [ids[:length - 1] + [self._end] for ids in self._processor.encode(texts)]
      out = np.full((len(rows), length), self._end, np.int32)
    else:
      rows = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
      out = np.full((len(rows), length), PAD_ID, np.int32)
    for row, ids in zip(out, rows):
      row[:len(ids)] = ids
    return out

  def vocabulary(self) -> list[str]:
    """Every token, in id order."""
    if self._kind == "sentencepiece":
      return [self._processor.id_to_piece(i) for i in range(self.vocab_size)]
    by_id = {i: token for token, i in self._tokenizer.get_vocab(with_added_tokens=True).items()}
    return [by_id.get(i, "") for i in range(self.vocab_size)]

  def pieces(self, text: str) -> list[str]:
    if self._kind == "sentencepiece":
      return self._processor.encode(self.normalize(text), out_type=str)
    return self._tokenizer.encode(self.normalize(text), add_special_tokens=False).tokens

  def published_file(self, directory: str) -> str:
    """Writes the tokenizer as its reference reads it (tokenizer.json, or spiece.model for
    SentencePiece) into `directory`; returns the file's name."""
    if self._kind == "sentencepiece":
      utils.write_atomic(os.path.join(directory, SENTENCEPIECE_FILE),
                         base64.b64decode(self._model))
      return SENTENCEPIECE_FILE
    utils.write_atomic(os.path.join(directory, HF_FILE), self._model.encode("utf-8"))
    return HF_FILE

  def save(self, directory: str) -> None:
    """The settings, then the tokenizer (what `exists` checks), each atomically."""
    os.makedirs(directory, exist_ok=True)
    utils.write_json(os.path.join(directory, SETTINGS_FILE), {"max_length":
                                                              self.settings.max_length})
    utils.write_atomic(os.path.join(directory, FILE), self.model_proto)

  @classmethod
  def load(cls, directory: str) -> "PretrainedTokenizer":
    with open(os.path.join(directory, FILE), encoding="utf-8") as f:
      saved = json.load(f)
    with open(os.path.join(directory, SETTINGS_FILE), encoding="utf-8") as f:
      max_length = json.load(f)["max_length"]
    return cls(saved["kind"], saved["tokenizer"], saved["cleaning"], max_length)

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, FILE))


def in_folder(folder: str) -> str | None:
  """The tokenizer file a Hugging Face folder holds (tokenizer.json first), or None."""
  for name in (HF_FILE, SENTENCEPIECE_FILE):
    if os.path.exists(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def from_path(path: str, max_length: int) -> PretrainedTokenizer:
  """The tokenizer at `path`: a `tokenizer.json`, open_clip's BPE merges (`.txt.gz` or
  `.txt`), a SentencePiece `.model` (SigLIP's cleaning), or a folder holding a tokenizer.json
  or spiece.model. Raises UsageError naming the path otherwise."""
  if os.path.isdir(path):
    if in_folder(path) is None:
      raise UsageError(f"init.tokenizer {path!r}: the folder holds no {HF_FILE} or "
                       f"{SENTENCEPIECE_FILE}")
    path = in_folder(path)
  if not os.path.exists(path):
    raise UsageError(f"init.tokenizer {path!r} does not exist")
  try:
    if path.endswith(".json"):
      with open(path, encoding="utf-8") as f:
        text = f.read()
      return PretrainedTokenizer("tokenizers", text, "none", max_length)
    if path.endswith((".txt.gz", ".txt")):
      return PretrainedTokenizer("tokenizers", open_clip_bpe(path), "open_clip", max_length)
    if path.endswith(".model"):
      with open(path, "rb") as f:
        model = base64.b64encode(f.read()).decode("ascii")
      return PretrainedTokenizer("sentencepiece", model, "siglip", max_length)
  except Exception as error:  # pylint: disable=broad-except  (tokenizers raises Exception)
    raise UsageError(f"init.tokenizer {path!r} cannot be read: "
                     f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                     ) from None
  raise UsageError(f"init.tokenizer {path!r}: expected a tokenizer.json, open_clip's BPE "
                   "merges (.txt.gz), a SentencePiece .model, or a folder holding one")


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
