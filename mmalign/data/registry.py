"""Registry of the TFDS builders that mmalign can build offline.

Every registered builder yields the same three features, so the input pipeline,
the trainer and the evaluators never special-case a dataset:
  image:   uint8 [height, width, channels]
  caption: text that describes the image
  group:   int64 identity of what the caption names (a code point, an emoji);
           examples that share a group are all correct answers for its caption.
Builders may add more features (labels, attributes) for later tasks.
"""

from mmalign.registry import Registry

DATASETS = Registry("dataset")
register_dataset = DATASETS.register
