"""Image encoding for TFDS builders: PNG bytes, because TFDS needs TensorFlow to
encode numpy arrays itself and mmalign runs without TensorFlow."""

import io

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray) -> bytes:
  """Encodes uint8 `[h, w]`, `[h, w, 1]` or `[h, w, 3]` as PNG."""
  if pixels.dtype != np.uint8:
    raise TypeError(f"png_bytes expects uint8 pixels, got {pixels.dtype}")
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()
