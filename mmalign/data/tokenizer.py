"""Subword tokenizer trained offline on the training captions (SentencePiece).

The tokenizer is part of the experiment: saved beside the checkpoint and reloaded by
evaluation and search, so a query is preprocessed exactly as the training captions were.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import unicodedata
from collections.abc import Iterable

import numpy as np
import sentencepiece as spm

from mmalign import utils

PAD_ID = 0
UNK_ID = 1
MODEL_FILE = "tokenizer.model"
SETTINGS_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class TextSettings:
  """Preprocessing that must match between training and every later use."""
  vocab_size: int = 1024
  max_length: int = 16
  lowercase: bool = True
  unicode_normalization: str = "NFKC"  # Or "none".
  model_type: str = "unigram"  # SentencePiece: unigram, bpe, word, char.

  def normalize(self, text: str) -> str:
    if self.unicode_normalization != "none":
      text = unicodedata.normalize(self.unicode_normalization, text)
    return text.lower() if self.lowercase else text


class Tokenizer:
  """Turns captions into padded token ids `[n, max_length]` int32 (PAD_ID = 0)."""

  def __init__(self, model_proto: bytes, settings: TextSettings):
    self.settings = settings
    self._model_proto = model_proto
    self._processor = spm.SentencePieceProcessor(model_proto=model_proto)

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model: what `save` writes to MODEL_FILE."""
    return self._model_proto

  def normalize(self, text: str) -> str:
    return self.settings.normalize(text)

  def encode(self, texts: Iterable[str]) -> np.ndarray:
    """Token ids `[n, max_length]` int32; long captions are truncated."""
    texts = [self.normalize(t) for t in texts]
    ids = self._processor.encode(texts)
    out = np.full((len(texts), self.settings.max_length), PAD_ID, np.int32)
    for row, piece_ids in enumerate(ids):
      piece_ids = piece_ids[:self.settings.max_length]
      out[row, :len(piece_ids)] = piece_ids
    return out

  def vocabulary(self) -> list[str]:
    """Every piece, in token-id order."""
    return [self._processor.id_to_piece(i) for i in range(self.vocab_size)]

  def pieces(self, text: str) -> list[str]:
    return self._processor.encode(self.normalize(text), out_type=str)

  @classmethod
  def train(cls, captions: Iterable[str], settings: TextSettings) -> "Tokenizer":
    """Trains on `captions` deterministically (no sampling, one thread)."""
    texts = sorted({settings.normalize(t) for t in captions})
    if not texts:
      raise ValueError("cannot train a tokenizer on zero captions")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model,
        vocab_size=settings.vocab_size, model_type=settings.model_type,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
        hard_vocab_limit=False, character_coverage=1.0,
        normalization_rule_name="identity",  # We normalise ourselves, above.
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        minloglevel=2)
    return cls(model.getvalue(), settings)

  def save(self, directory: str) -> None:
    """Writes the settings, then the model (what `exists` checks), each atomically, so a
    crash leaves no half-saved tokenizer."""
    os.makedirs(directory, exist_ok=True)
    utils.write_json(os.path.join(directory, SETTINGS_FILE), dataclasses.asdict(self.settings))
    utils.write_atomic(os.path.join(directory, MODEL_FILE), self._model_proto)

  @classmethod
  def load(cls, directory: str) -> "Tokenizer":
    model_path = os.path.join(directory, MODEL_FILE)
    if not os.path.exists(model_path):
      raise FileNotFoundError(f"no tokenizer in {directory} (expected {MODEL_FILE})")
    with open(model_path, "rb") as proto, open(os.path.join(directory, SETTINGS_FILE)) as f:
      return cls(proto.read(), TextSettings(**json.load(f)))

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, MODEL_FILE))
