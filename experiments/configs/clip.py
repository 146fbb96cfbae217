"""CLIP's published architectures (Radford et al. 2021), to load their weights into.

  python launch.py --config=experiments/configs/clip.py:vit_b32 \
      --config.init.checkpoint=/path/to/clip-vit-base-patch32/model.safetensors ...

`vit_b32` and `vit_b16` are OpenAI's ViT-B/32 and ViT-B/16 at 224 px: a ViT-B image tower
with CLIP's options, the 12-layer 512-wide causal text Transformer, 512-wide projections,
CLIP's image statistics. Parameter counts equal the reference implementations'
(tests/checkpoints). Everything else is the quickstart's.
"""

import ml_collections

from experiments.configs import quickstart

# image_kwargs.vit options of CLIP's image tower (mmalign.checkpoints.hf_clip.CLIP_VIT).
CLIP_VIT = {"pooling": "cls", "patch_bias": False, "norm_embeddings": True,
            "final_norm_on": "pooled", "activation": "quick_gelu", "norm_epsilon": 1e-5}
PATCH_SIZES = {"vit_b32": 32, "vit_b16": 16}


def get_config(arg: str = "vit_b32") -> ml_collections.ConfigDict:
  if arg not in PATCH_SIZES:
    raise ValueError(f"experiments/configs/clip.py:ARG with ARG one of {sorted(PATCH_SIZES)}, "
                     f"not {arg!r}")
  c = quickstart.get_config()
  c.data.update(image_mean=(0.48145466, 0.4578275, 0.40821073),
                image_std=(0.26862954, 0.26130258, 0.27577711), image_size=224)
  c.text.update(vocab_size=49408, max_length=77)
  c.model.text_encoder = "clip_text"
  c.model.text_kwargs.clip_text.update(width=512, depth=12, heads=8)
  c.model.image_encoder = "vit"
  c.model.image_kwargs.vit = ml_collections.ConfigDict(
      {"variant": "B", "patch_size": PATCH_SIZES[arg], **CLIP_VIT})
  c.model.embed_dim = 512
  c.model.init_scale = 1 / 0.07
  return c
