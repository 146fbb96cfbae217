"""shapes/full: a dual encoder whose embeddings feed experiments/tasks_shapes.py.

  python launch.py --config=experiments/configs/shapes.py --workdir=workdirs/shapes
  python -m experiments.tasks_shapes --workdir=workdirs/shapes

Captions are compositional ("a small red circle above a large blue square"), so word
order matters: the text tower is a small transformer. Everything else is the quickstart's.
"""

import ml_collections

from experiments.configs import quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = quickstart.get_config(arg)
  c.data.name = "shapes"
  c.data.config = "full"
  c.data.image_mean = (0.9, 0.9, 0.9)  # Mostly white page.
  c.data.image_std = (0.25, 0.25, 0.25)
  c.data.max_shift = 0
  c.text.vocab_size = 256  # 20 distinct words.
  c.text.max_length = 16
  c.model.text_encoder = "transformer"
  c.model.text_kwargs.transformer.update(width=128, depth=2, heads=4)
  c.model.image_kwargs.cnn.update(channels=(32, 64, 128), width=256)
  c.model.embed_dim = 128
  c.train.steps = 1000
  c.train.learning_rate = 1e-3
  c.retrieval.example_query = "a large red circle left of a small blue square"
  return c
