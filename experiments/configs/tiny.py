"""A seconds-long run on unicode_glyphs/tiny, for tests and smoke checks.

  python launch.py --config=experiments/configs/tiny.py --workdir=/tmp/mmalign_tiny
"""

import ml_collections

from experiments.configs import quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = quickstart.get_config(arg)
  c.data.config = "tiny"
  c.text.vocab_size = 128
  c.model.text_kwargs.width = 32
  c.model.image_kwargs.channels = (8, 16)
  c.model.image_kwargs.width = 32
  c.model.embed_dim = 32
  c.train.batch_size = 16
  c.train.steps = 6
  c.train.warmup_steps = 2
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.eval.batch_size = 64
  c.retrieval.k = 5
  c.retrieval.example_query = "latin small letter a with grave"
  return c
