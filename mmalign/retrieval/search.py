"""Text→image search with ScaNN over a split's images, from a trained workdir.

The index is built once per (checkpoint step, split) and saved in the workdir,
so later searches only embed the query.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from mmalign import experiment as experiment_lib
from mmalign.data import pipeline, sources
from mmalign.errors import UsageError
from mmalign.retrieval.contact_sheet import save_contact_sheet
from mmalign.retrieval.scann_index import ScannConfig, ScannIndex


@dataclasses.dataclass(frozen=True)
class Hit:
  rank: int
  score: float
  caption: str
  example_index: int


def gallery_index(exp: experiment_lib.Experiment, variables, step: int, split: str,
                  config: ScannConfig) -> ScannIndex:
  """Loads the saved index of this step and split, or builds and saves it."""
  directory = os.path.join(exp.workdir, "scann", f"{split}_step{step}")
  if os.path.exists(os.path.join(directory, "manifest.json")):
    return ScannIndex.load(directory)
  image_emb = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, split),
                                          exp.config.eval.batch_size)
  index = ScannIndex.build(image_emb, config)
  index.save(directory)
  return index


def search(exp: experiment_lib.Experiment, variables, step: int, query: str, *, k: int,
           split: str, scann_config: ScannConfig) -> tuple[list[Hit], str]:
  """Top-k images for `query`; returns the hits and the path of the contact sheet PNG."""
  if not query or not query.strip():
    raise UsageError("--query is empty: give the text to search for, e.g. "
                     "--query='latin small letter a with grave'")
  index = gallery_index(exp, variables, step, split, scann_config)
  query_emb = experiment_lib.embed_texts(exp, variables, [query])  # [1, d]
  scores, ids = index.search(query_emb, k)
  caption_source = sources.open_split(exp.builder, split, decode_images=False)
  hits = [Hit(rank + 1, float(score), pipeline.text_of(caption_source[int(i)]["caption"]),
              int(i)) for rank, (score, i) in enumerate(zip(scores[0], ids[0]))]
  image_source = sources.open_split(exp.builder, split)
  images = pipeline.decode_images(image_source, np.array([h.example_index for h in hits]))
  wanted = exp.tokenizer.normalize(query.strip())
  correct = [exp.tokenizer.normalize(h.caption) == wanted for h in hits]
  path = os.path.join(exp.workdir, f"search_{_slug(query)}.png")
  save_contact_sheet(path, query, images, [h.caption for h in hits],
                     np.array([h.score for h in hits]), correct if any(correct) else None)
  return hits, path


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "query"
