"""Fixtures shared by the input-pipeline tests: each test module defines `source`
(its fake split); the index and tokenizer are built from it the same way."""

import pytest

from mmalign.data import pipeline
from mmalign.data.tokenizer import TextSettings, Tokenizer


@pytest.fixture(scope="module")
def index(source):
  return pipeline.index_split(source)


@pytest.fixture(scope="module")
def tokenizer(index, request):
  """A small BPE over the group captions; a module may set TOKENIZER_VOCAB."""
  vocab = getattr(request.module, "TOKENIZER_VOCAB", 48)
  return Tokenizer.train(index.group_captions,
                         TextSettings(vocab_size=vocab, max_length=6, model_type="bpe"))
