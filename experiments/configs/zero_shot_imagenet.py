"""Zero-shot ImageNet classification of a published CLIP (CLIP's protocol), no training.

  python launch.py --config=experiments/configs/zero_shot_imagenet.py --workdir=workdirs/zs_in \
      --mode=eval --config.data.data_dir=$HOME/tensorflow_datasets \
      --config.init.checkpoint=$HOME/weights/clip-vit-base-patch32 \
      --config.evals.imagenet.class_names_file=$HOME/imagenet_class_names.txt

Data: TFDS `imagenet2012` prepared as array_record; the 50,000 validation images are
classified among the 1,000 classes, each class embedded as the average of its prompts.
TFDS names the classes by WordNet id (n01440764), so pass readable names, one per line in
label order (`class_names_file`); prompts come from `templates` or `templates_file`.
"""

import ml_collections

from experiments.configs import clip

# A small prompt ensemble; pass a longer one with `templates_file` (one per line).
TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.",
             "a drawing of a {}.", "a black and white photo of a {}.",
             "a photo of a small {}.", "a photo of a large {}.")


def get_config(arg: str = "vit_b32") -> ml_collections.ConfigDict:
  c = clip.get_config(arg)
  c.data.update(name="imagenet2012", config=None)
  c.eval.split = "validation"
  c.eval.batch_size = 256
  c.evals = ml_collections.ConfigDict({
      "imagenet": {"type": "zero_shot", "split": "validation", "label": "label",
                   "templates": TEMPLATES}})
  return c
