"""What launch.py's `--mode=index` and `--query_image=path.png` do, as plain functions.

Both use only an index whose manifest matches the workdir's model and config; a mismatch
is a UsageError giving the reason, which the launcher prints as one line."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign.errors import UsageError
from mmalign.retrieval import search as search_lib

_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # Channels of the dataset image -> PIL mode.


def build_index_for_workdir(exp: experiment_lib.Experiment) -> str:
  """Builds and saves the image and caption indexes of `eval.split` for the latest
  checkpoint; returns the image index's directory (the caption index is beside it, with the
  suffix `_text`). Searcher and its settings come from `config.retrieval`."""
  split = exp.config.eval.split
  variables, step = train_state.restore_variables(exp)
  for modality in ("text", "image"):
    search_lib.build_gallery_index(exp, variables, step, split, modality=modality)
  return search_lib.index_dir(exp.workdir, split, step, "image")


def read_query_image(image_path: str, shape: tuple[int, int, int]) -> np.ndarray:
  """The PNG (or any PIL format) at image_path as uint8 [h, w, c], converted and resized
  (bilinear) to the dataset's shape, as the encoder was trained only on that shape."""
  if not image_path or not os.path.isfile(image_path):
    raise UsageError(f"--query_image {image_path!r} is not a file")
  height, width, channels = shape
  try:
    with Image.open(image_path) as image:
      image = image.convert(_PIL_MODES[channels])
      if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
      pixels = np.asarray(image, np.uint8)
  except (UnidentifiedImageError, OSError) as e:
    raise UsageError(f"--query_image {image_path!r} is not a readable image ({e})") from None
  return pixels.reshape(height, width, channels)


def search_image_query(exp: experiment_lib.Experiment, image_path: str,
                       k: int | None = None) -> tuple[list[search_lib.Hit], str]:
  """Image→text: the k captions of `eval.split` nearest to the image at image_path, for the
  latest checkpoint. Returns the hits (best first; each names an example image of the
  caption's group) and the path of the contact sheet PNG,
  `<workdir>/search_image_<file name>.png`."""
  k = exp.config.retrieval.k if k is None else k
  height, width, channels = exp.stored_image_shape
  if height is None or width is None:  # Images of any size: the model's input size.
    height = width = exp.normalization.size
  pixels = read_query_image(image_path, (height, width, channels))  # [h, w, c] uint8
  variables, step = train_state.restore_variables(exp)
  split = exp.config.eval.split
  index = search_lib.gallery_index(exp, variables, step, split, modality="text")
  query = experiment_lib.embed_image_array(exp, variables,
                                           exp.normalization(pixels[None]))[0]  # [d]
  scores, ids = index.search(query, k)  # [k]
  hits = search_lib.hits_of(exp, split, "text", scores, ids)
  stem = os.path.splitext(os.path.basename(image_path))[0]
  path = os.path.join(exp.workdir, f"search_image_{search_lib.slug(stem)}.png")
  search_lib.save_hits_sheet(exp, split, hits, path,
                             f"image query: {os.path.basename(image_path)}", query_image=pixels)
  return hits, path
