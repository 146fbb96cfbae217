"""Search a trained workdir in both directions: text→image and image→text.

A gallery is one modality of one split embedded by one checkpoint: the split's images
(queried by text) or its distinct captions (queried by an image), indexed once per (step,
split) and saved in the workdir, so later searches only embed the query.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Callable

import jax
import numpy as np

from mmalign import experiment as experiment_lib
from mmalign import settings
from mmalign.data import pipeline, sources
from mmalign.errors import UsageError
from mmalign.retrieval import searchers, sharded
from mmalign.retrieval.base import Index
from mmalign.retrieval.contact_sheet import save_contact_sheet
from mmalign.retrieval.manifest import MANIFEST, IndexMismatchError, Provenance
from mmalign.retrieval.scann_index import ScannConfig

INDEX_ROOT = "scann"


@dataclasses.dataclass(frozen=True)
class Hit:
  rank: int
  score: float
  caption: str
  example_index: int  # An example of the split showing the hit (its image).
  item_id: int = -1   # The index's item id: example index (images) or group id (texts).


@dataclasses.dataclass(frozen=True)
class Gallery:
  """How one modality of a split becomes an indexed gallery, and how its hits read."""
  suffix: str  # Of the index directory name.
  item_key: str  # What an item id names; {dataset} and {split} are filled in.
  embed: Callable  # (exp, variables, split[, (p, P)]) -> (embeddings [n, d], ids [n])
  describe: Callable  # (exp, split, ids [m]) -> (captions [m], example indices [m])


def _embed_images(exp, variables, split, part=(0, 1)):
  """Each distinct image once (a multi-caption image is several examples), id'd by example;
  `part` (p, P): only every P-th of them from the p-th, one process's shard."""
  rows = _split_index(exp, split).image_examples.astype(np.int64)[part[0]::part[1]]
  emb = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, split),
                                    exp.config.eval.batch_size, indices=rows)  # [n, d]
  return emb, rows


def _describe_images(exp, split, ids):
  captions = sources.open_split(exp.builder, split, decode_images=False)
  return [pipeline.text_of(captions[int(i)]["caption"]) for i in ids], [int(i) for i in ids]


def _split_index(exp, split) -> pipeline.SplitIndex:
  return pipeline.index_split(sources.open_split(exp.builder, split, decode_images=False))


def _embed_texts(exp, variables, split, part=(0, 1)):
  index = _split_index(exp, split)
  captions = index.group_captions[part[0]::part[1]]
  return experiment_lib.embed_texts(exp, variables, captions), index.group_ids[part[0]::part[1]]


def _describe_texts(exp, split, ids):
  index = _split_index(exp, split)
  rows = np.searchsorted(index.group_ids, ids)
  return ([index.group_captions[r] for r in rows], [int(index.members[r][0]) for r in rows])


GALLERIES = {
    "image": Gallery("", "example index in {dataset}:{split}", _embed_images, _describe_images),
    "text": Gallery("_text", "group id in {dataset}:{split} (its first caption)",
                    _embed_texts, _describe_texts),
}


def _gallery(modality: str) -> Gallery:
  if modality not in GALLERIES:
    raise UsageError(f"unknown gallery modality {modality!r}; allowed: {', '.join(GALLERIES)}")
  return GALLERIES[modality]


def scann_config(config) -> ScannConfig:
  """The ScaNN settings of `config.retrieval` (k, num_leaves, leaves to search, reorder)."""
  knobs = {name: settings.value(config, f"retrieval.{name}")
           for name in ("num_leaves", "num_leaves_to_search", "reorder")}
  return ScannConfig(num_neighbors=config.retrieval.k, **knobs)


def searcher_of(config, name: str | None = None) -> tuple[str, object]:
  """(searcher name, its config): `name`, else `config.retrieval.searcher` (else "scann"),
  with k (and for ScaNN the tree knobs) from `config.retrieval`."""
  name = name or settings.value(config, "retrieval.searcher")
  searcher = searchers.SEARCHERS.get(name, config_key="retrieval.searcher")
  if name == "scann":
    return name, scann_config(config)
  return name, searcher.config_class(num_neighbors=config.retrieval.k)


def embedding_config_hash(exp: experiment_lib.Experiment) -> str:
  """sha256 of what determines the embeddings (model, tokenizer, dataset, image
  normalisation, text settings): changing eval batch size or retrieval knobs keeps indexes."""
  config = exp.config
  payload = {"meta": exp.meta(), "image_mean": list(config.data.image_mean),
             "image_std": list(config.data.image_std), "text": config.text.to_dict()}
  if exp.normalization.size:  # Absent before image_size existed: older indexes stay valid.
    payload["image_size"] = exp.normalization.size
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def provenance(exp: experiment_lib.Experiment, step: int, split: str,
               modality: str) -> Provenance:
  dataset = f"{exp.config.data.name}/{exp.config.data.config}"
  return Provenance(checkpoint_step=int(step), config_hash=embedding_config_hash(exp),
                    tokenizer_sha256=exp.tokenizer_sha256(), dataset=dataset, split=split,
                    modality=modality,
                    item_key=_gallery(modality).item_key.format(dataset=dataset, split=split))


def index_dir(workdir: str, split: str, step: int, modality: str = "image") -> str:
  return os.path.join(workdir, INDEX_ROOT, f"{split}_step{step}{_gallery(modality).suffix}")


def build_gallery_index(exp: experiment_lib.Experiment, variables, step: int, split: str,
                        scann_config: ScannConfig | None = None, *,
                        modality: str = "image", searcher: str | None = None) -> Index:
  """Embeds the gallery, indexes it with `searcher` (None: `config.retrieval.searcher`) and
  saves it in the workdir (replacing any index)."""
  searcher, config = searcher_of(exp.config, searcher)
  if searcher == "scann" and scann_config is not None:
    config = scann_config
  directory = index_dir(exp.workdir, split, step, modality)
  origin = provenance(exp, step, split, modality)
  # Process p of P embeds and indexes items p, p + P, ...: shard p (all of them when P = 1).
  embeddings, ids = _gallery(modality).embed(exp, variables, split,
                                             (jax.process_index(), jax.process_count()))
  if jax.process_count() > 1:
    sharded.build_sharded(directory, searcher, embeddings, ids, config, provenance=origin)
    return sharded.ShardedIndex.load(directory)
  index = searchers.build_index(searcher, embeddings, config, ids=ids, provenance=origin)
  index.save(directory)
  return index


def gallery_index(exp: experiment_lib.Experiment, variables, step: int, split: str,
                  scann_config: ScannConfig | None = None, *, modality: str = "image",
                  searcher: str | None = None) -> Index:
  """Loads the saved index of this step, split and modality (sharded or one), or builds and
  saves it. Raises IndexMismatchError (a UsageError) when the saved one was built for
  another model, config or searcher (None: `config.retrieval.searcher`)."""
  searcher = searcher_of(exp.config, searcher)[0]
  directory = index_dir(exp.workdir, split, step, modality)
  expect = provenance(exp, step, split, modality)
  if os.path.exists(os.path.join(directory, sharded.SHARDS_FILE)):  # Built by P processes.
    index = sharded.ShardedIndex.load(directory, expect=expect)
  elif os.path.exists(os.path.join(directory, MANIFEST)):
    index = searchers.load_index(directory, dim=exp.model.embed_dim, expect=expect)
  else:
    return build_gallery_index(exp, variables, step, split, scann_config, modality=modality,
                               searcher=searcher)
  if index.name != searcher:
    raise IndexMismatchError(f"index {directory!r} is a {index.name!r} index but the config "
                             f"asks for {searcher!r} (retrieval.searcher); rebuild it "
                             "(--mode=index)")
  return index


def hits_of(exp: experiment_lib.Experiment, split: str, modality: str, scores: np.ndarray,
            ids: np.ndarray) -> list[Hit]:
  """One query's results [k] as Hits; missing slots (id -1: k above the gallery) dropped."""
  keep = ids >= 0
  scores, ids = scores[keep], ids[keep]
  captions, examples = _gallery(modality).describe(exp, split, ids)
  return [Hit(rank + 1, float(s), c, e, int(i))
          for rank, (s, c, e, i) in enumerate(zip(scores, captions, examples, ids))]


def search(exp: experiment_lib.Experiment, variables, step: int, query: str, *, k: int,
           split: str, scann_config: ScannConfig,
           searcher: str | None = None) -> tuple[list[Hit], str]:
  """Top-k images for the text `query`; returns the hits and the contact sheet's path."""
  if not query or not query.strip():
    raise UsageError("--query is empty: give the text to search for, e.g. "
                     "--query='latin small letter a with grave'")
  index = gallery_index(exp, variables, step, split, scann_config, modality="image",
                        searcher=searcher)
  scores, ids = index.search(experiment_lib.embed_texts(exp, variables, [query])[0], k)  # [k]
  hits = hits_of(exp, split, "image", scores, ids)
  wanted = exp.tokenizer.normalize(query.strip())
  correct = [exp.tokenizer.normalize(h.caption) == wanted for h in hits]
  path = os.path.join(exp.workdir, f"search_{slug(query)}.png")
  save_hits_sheet(exp, split, hits, path, query, correct if any(correct) else None)
  return hits, path


def save_hits_sheet(exp: experiment_lib.Experiment, split: str, hits: list[Hit], path: str,
                    title: str, correct=None, query_image=None) -> None:
  """The contact sheet PNG of one query's hits, each shown by its example's image."""
  images = pipeline.decode_images(sources.open_split(exp.builder, split),
                                  np.array([h.example_index for h in hits]),
                                  exp.normalization.size)
  save_contact_sheet(path, title, images, [h.caption for h in hits],
                     np.array([h.score for h in hits]), correct, query_image=query_image)


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "query"
