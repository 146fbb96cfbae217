"""SigLIP's published architecture (Zhai et al. 2023), to load its weights into.

  python launch.py --config=experiments/configs/siglip.py:b16 \
      --config.init.checkpoint=/path/to/siglip-base-patch16-224 ...

`b16` is SigLIP B/16 at 224 px (Hugging Face `google/siglip-base-patch16-224`, big_vision's
`siglip_base_patch16_224`): a ViT-B/16 image tower with attention pooling and no projection,
the 12-layer 768-wide text Transformer read at its last position with a linear head, 64
tokens of a 32,000-piece SentencePiece vocabulary, the sigmoid loss with its learned bias,
images scaled to [-1, 1]. The parameter count equals the reference implementation's
(tests/checkpoints). Everything else is the quickstart's.
"""

import ml_collections

from experiments.configs import quickstart

# image_kwargs.vit and text_kwargs.clip_text options of SigLIP's towers
# (mmalign.checkpoints.hf_clip.SIGLIP_VIT and SIGLIP_TEXT).
SIGLIP_VIT = {"pooling": "map", "patch_bias": True, "norm_embeddings": False,
              "final_norm_on": "all", "activation": "gelu_tanh", "norm_epsilon": 1e-6}
SIGLIP_TEXT = {"causal": False, "pooling": "last", "activation": "gelu_tanh",
               "norm_epsilon": 1e-6}
VARIANTS = {"b16": 16}


def get_config(arg: str = "b16") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"experiments/configs/siglip.py:ARG with ARG one of {sorted(VARIANTS)}, "
                     f"not {arg!r}")
  c = quickstart.get_config()
  c.data.update(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), image_size=224)
  c.text.update(vocab_size=32000, max_length=64)
  c.model.text_encoder = "clip_text"
  c.model.text_kwargs.clip_text.update(width=768, depth=12, heads=12, **SIGLIP_TEXT)
  c.model.image_encoder = "vit"
  c.model.image_kwargs.vit = ml_collections.ConfigDict(
      {"variant": "B", "patch_size": VARIANTS[arg], **SIGLIP_VIT})
  c.model.embed_dim = 768
  c.model.text_projection_kwargs = ml_collections.ConfigDict({"use_bias": True})
  c.model.image_projection_kwargs = ml_collections.ConfigDict({"linear": False})
  c.model.init_scale = 10.0
  c.model.init_bias = -10.0
  c.model.max_scale = 1e4  # SigLIP leaves its temperature unclipped.
  c.loss.name = "sigmoid"
  return c
