"""Deterministic splits by identity, so no caption of a held-out split is trained on."""

import zlib

SPLIT_FRACTIONS = {"test": 0.1, "validation": 0.1}  # The rest is train.


def split_of(identity: str) -> str:
  """Assigns an identity (a code point, an emoji) to train/validation/test.

  A stable hash (crc32, not Python's salted `hash`) keeps the assignment the
  same on every machine and Python version.
  """
  bucket = (zlib.crc32(identity.encode("utf-8")) % 1000) / 1000.0
  if bucket < SPLIT_FRACTIONS["test"]:
    return "test"
  if bucket < SPLIT_FRACTIONS["test"] + SPLIT_FRACTIONS["validation"]:
    return "validation"
  return "train"
