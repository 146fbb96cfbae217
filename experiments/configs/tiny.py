"""A seconds-long run on unicode_glyphs/tiny, for tests and smoke checks.

  python launch.py --config=experiments/configs/tiny.py --workdir=workdirs/tiny

Every kwargs block of the quickstart is shrunk, so any encoder or fusion module
can be switched in with the same overrides and still run in seconds.
"""

import ml_collections

from experiments.configs import quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = quickstart.get_config(arg)
  c.data.config = "tiny"
  c.text.vocab_size = 128
  for block in c.model.text_kwargs.values():
    block.width = 32
  c.model.text_kwargs.transformer.update(depth=1, heads=2)
  c.model.text_kwargs.clip_text.update(depth=1, heads=2)
  c.model.image_kwargs.cnn.update(channels=(8, 16), width=32)
  c.model.image_kwargs.vgg = ml_collections.ConfigDict(
      {"layout": (8, "M", 16, "M"), "norm": "batch", "pooling": "mean"})
  c.model.image_kwargs.resnet.update(width=8)
  c.model.image_kwargs.vit.update(width=32, depth=1, heads=2, mlp_dim=64, patch_size=8)
  c.model.fusion_kwargs.cross_attention.heads = 2
  c.model.fusion_kwargs.joint_transformer.heads = 2
  c.model.fusion_kwargs.correspondence.out_dim = 32
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
