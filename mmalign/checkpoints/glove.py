"""GloVe-format word vectors into a text tower's token embedding table.

The file is text, one `word v1 ... vd` per line (GloVe's format; word2vec's text format
adds a first line `count dim`, which is skipped). A piece that starts a word ("▁latin")
takes the vector of its text after SentencePiece's marker "▁" (exact, else lowercased);
pieces inside a word ("ing") take none, as a word's vector says nothing about its parts.
Why through the tokenizer: the table's rows are token ids, which exist only once the
run's tokenizer is trained.
"""

from __future__ import annotations

import numpy as np

from mmalign.checkpoints import Imported
from mmalign.data.tokenizer import PAD_ID, UNK_ID, Tokenizer
from mmalign.errors import UsageError

WORD_START = "\u2581"  # SentencePiece's marker of a piece that starts a word.
EMBEDDING = "params/text_tower/embed/embedding"  # [vocab_size, width]: every text encoder's.


def read_vectors(path: str, wanted: set[str] | None = None) -> tuple[dict[str, np.ndarray], int]:
  """({word: float32 [dim]} for the words in `wanted`, all when None; dim).

  The first occurrence of a word wins. A word may contain spaces (some GloVe releases
  have such lines): the last `dim` fields are the vector. Raises UsageError naming the
  line for a malformed, non-numeric or non-finite entry, and for a file with no vector.
  """
  vectors, dim = {}, None
  try:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        fields = line.rstrip("\r\n").rstrip(" ").split(" ")
        if number == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
          continue  # word2vec's header.
        if dim is None:
          dim = len(fields) - 1
        if dim < 1 or len(fields) <= dim:
          raise UsageError(f"init.checkpoint {path!r} line {number}: expected `word` and "
                           f"{dim if dim and dim >= 1 else 'some'} numbers")
        word = " ".join(fields[:-dim])
        if (wanted is not None and word not in wanted) or word in vectors:
          continue
        try:
          vector = np.asarray(fields[-dim:], np.float32)
        except ValueError:
          raise UsageError(f"init.checkpoint {path!r} line {number}: {word!r} has a "
                           f"non-numeric value, or fewer than the {dim} numbers of line 1"
                           ) from None
        if not np.all(np.isfinite(vector)):
          raise UsageError(f"init.checkpoint {path!r} line {number}: {word!r} has a "
                           "non-finite value")
        vectors[word] = vector
  except UnicodeDecodeError as error:
    raise UsageError(f"init.checkpoint {path!r} is not UTF-8 text ({error.reason} at byte "
                     f"{error.start}); is init.format right?") from None
  if dim is None:
    raise UsageError(f"init.checkpoint {path!r} holds no vectors")
  return vectors, dim


def word_of(piece: str) -> str:
  """The word whose vector a piece takes: its text after "▁", or "" (none) inside a word."""
  return piece[len(WORD_START):] if piece.startswith(WORD_START) else ""


def load(path: str, variables: dict, tokenizer: Tokenizer) -> Imported:
  """The embedding table with a GloVe vector in each row whose piece has one.

  Padding, unknown and unmatched pieces keep `variables`' values (the model's own
  initialisation). Raises UsageError when the vectors' length differs from the table's
  width, or the model has no token embedding table.
  """
  try:
    table = np.asarray(variables["params"]["text_tower"]["embed"]["embedding"])
  except KeyError:
    raise UsageError(f"init.format='glove' fills {EMBEDDING}, which this text encoder does "
                     "not have") from None
  words = [word_of(piece) for piece in tokenizer.vocabulary()]
  vectors, dim = read_vectors(path, ({*words, *(w.lower() for w in words)}) - {""})
  if dim != table.shape[1]:
    raise UsageError(f"init.checkpoint {path!r} holds vectors of {dim} numbers, but {EMBEDDING} "
                     f"has shape {table.shape}: set model.text_kwargs.<encoder>.width={dim}")
  table = table.copy()
  matched = 0
  for token_id, word in enumerate(words):
    vector = vectors.get(word, vectors.get(word.lower())) if word else None
    if vector is not None and token_id not in (PAD_ID, UNK_ID):
      table[token_id] = vector
      matched += 1
  note = (f"{matched} of {len(words)} tokens took a vector from {path}; the other "
          f"{len(words) - matched} (padding, unknown, pieces inside a word or without a "
          "vector) keep their random initialisation")
  return Imported({EMBEDDING: table}, notes=(note,))
