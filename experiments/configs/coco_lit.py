"""LiT on COCO captions: CLIP's image tower loaded and locked, its text tower fine-tuned on
COCO's captions, scored by the COCO 5k retrieval protocol.

  python launch.py --config=experiments/configs/coco_lit.py --workdir=workdirs/coco_lit \
      --config.data.data_dir=$HOME/tensorflow_datasets \
      --config.init.checkpoint=$HOME/weights/clip-vit-base-patch32

Data: TFDS `coco_captions/2017` prepared as array_record (`tfds build coco_captions/2017
--file_format=array_record`); its Karpathy splits: training on train + restval (113k images,
5 captions each: a step draws one caption per image), evaluation on test (5k images, 25k
captions: every caption a query against the 5k images, an image's hit any of its captions).
"""

import ml_collections

from experiments.configs import clip


def get_config(arg: str = "vit_b32") -> ml_collections.ConfigDict:
  c = clip.get_config(arg)
  c.data.update(name="coco_captions", config="2017")
  c.data.features.update(caption="captions/text", group="image/id")
  c.data.splits.update(train="train+restval", validation="val")
  c.train.frozen = ("image_tower",)  # Locked: runs in inference mode, as in LiT.
  c.train.batch_size = 256
  c.train.steps = 5000
  c.train.warmup_steps = 500
  c.train.learning_rate = 1e-5
  c.train.checkpoint_every = 500
  c.eval.split = "test"
  c.evals = ml_collections.ConfigDict({
      "coco_5k": {"type": "retrieval", "split": "test"},
      "coco_val": {"type": "retrieval", "split": "validation", "every_steps": 1000}})
  return c
