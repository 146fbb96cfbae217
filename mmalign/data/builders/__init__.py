"""TFDS builders; importing this package registers every one of them."""

from mmalign.data.builders import openmoji, shapes, unicode_glyphs  # noqa: F401
