"""Registries of encoders; configs choose them by name with keyword arguments.

Every text encoder maps `tokens [batch, length] int32` (0 = padding) and every
image encoder maps `images [batch, height, width, channels] float32` to a pair
`(pooled [batch, width], sequence [batch, length, width])`; fusion modules in a
later layer need the sequence, retrieval needs the pooled vector.
"""

from mmalign.registry import Registry

TEXT_ENCODERS = Registry("text encoder")
IMAGE_ENCODERS = Registry("image encoder")
register_text_encoder = TEXT_ENCODERS.register
register_image_encoder = IMAGE_ENCODERS.register
