"""Cross-modal retrieval evaluation on a held-out split, exact and through the searcher.

Queries are the split's distinct captions (text→image) and its images (image→text); a hit
is any item of the query's group (e.g. any font's drawing of the named character). Where
images have several captions (COCO, Flickr30k), every caption is a query against the
distinct images (the standard 5k/1k protocol)."""

from __future__ import annotations

import os
import time

import numpy as np

from mmalign import experiment as experiment_lib
from mmalign import utils
from mmalign.data import pipeline, sources
from mmalign.eval import retrieval_metrics as rm
from mmalign.plots import plot_recall_curves
from mmalign.retrieval import search as retrieval_search
from mmalign.retrieval import searchers
from mmalign.utils import say

RESULTS_FILE = "eval_{split}.json"
CURVE_MAX_K = 50  # The recall curve PNG spans k = 1..50 (or up to the largest eval k).


class RetrievalEvaluator:
  """Text↔image recall on one split; `evaluate` embeds the split anew on every call."""

  def __init__(self, exp: experiment_lib.Experiment, *, split: str,
               ks: tuple[int, ...] | None = None, batch_size: int | None = None):
    self.exp, self.split = exp, split
    self.ks = tuple(exp.config.eval.ks if ks is None else ks)
    self.batch_size = exp.config.eval.batch_size if batch_size is None else batch_size
    self.searcher, self.searcher_config = retrieval_search.searcher_of(exp.config)
    self.index = pipeline.index_split(sources.open_split(exp.builder, split,
                                                         decode_images=False))

  def evaluate(self, variables, step: int | None) -> dict:
    """The results dict (see `format_table`); nothing written."""
    exp, index, ks = self.exp, self.index, self.ks
    started = time.perf_counter()
    image_rows = index.image_examples  # One example per distinct image.
    image_groups = index.groups[image_rows]
    image_emb = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder,
                                                                               self.split),
                                            self.batch_size, indices=image_rows)  # [images, d]
    if index.image_records is None:  # Each group's caption once.
      texts, text_groups = index.group_captions, index.group_ids
    else:  # Several captions per image: every caption is a query (COCO/Flickr protocol).
      texts, text_groups = index.captions, index.groups
    text_emb = experiment_lib.embed_texts(exp, variables, texts)  # [texts, d]
    embed_s = time.perf_counter() - started
    inputs = {"text_to_image": (text_emb, text_groups, image_emb, image_groups),
              "image_to_text": (image_emb, image_groups, text_emb, text_groups)}
    curve_ks = range(1, max(CURVE_MAX_K, *ks) + 1)
    results = {"dataset": f"{exp.config.data.name}/{exp.config.data.config}",
               "split": self.split, "step": step, "num_text_queries": len(texts),
               "gallery_images": len(image_rows)}
    curves = {}
    for direction, args in inputs.items():
      ranks = rm.first_hit_ranks(*args)
      chance = [rm.chance_recall_at_k(args[1], args[3], k) for k in curve_ks]
      curves[direction] = {"recall": [float((ranks <= k).mean()) for k in curve_ks],
                           "chance": chance}
      results[direction] = {**rm.retrieval_metrics(ranks, ks),
                            **{f"chance_recall@{k}": chance[k - 1] for k in ks}}
    searched = self._through_searcher(text_emb, text_groups, image_emb, image_groups)
    return {**results, "searcher": searched, "embed_s": embed_s, "recall_curves": curves}

  def _through_searcher(self, text_emb: np.ndarray, text_groups: np.ndarray,
                        image_emb: np.ndarray, image_groups: np.ndarray) -> dict:
    """The configured searcher's text→image answers, scored against exact search."""
    k = self.exp.config.retrieval.k
    searcher, (build_s,) = utils.time_calls(
        lambda: searchers.build_index(self.searcher, image_emb, self.searcher_config),
        repeats=1, warmup=0)
    (_, found_ids), (search_s,) = utils.time_calls(lambda: searcher.search(text_emb, k),
                                                   repeats=1, warmup=0)
    _, exact_ids = rm.exact_top_k(text_emb, image_emb, k)
    # Slots a searcher could not fill come back as id -1 (retrieval.vectors.MISSING_ID).
    found = found_ids >= 0
    hits = (found & (image_groups[np.where(found, found_ids, 0)]
                     == text_groups[:, None])).any(axis=1)
    return {"name": self.searcher, "k": k,
            "recall_at_k_vs_exact": rm.recall_vs_exact(found_ids, exact_ids, queries=text_emb,
                                                       gallery=image_emb),
            f"text_to_image_recall@{k}": float(hits.mean()),
            "brute_force": bool(getattr(searcher, "is_brute_force", True)),
            "build_s": build_s, "search_s": search_s, "queries": int(len(text_emb))}

  def report(self, results: dict) -> None:
    """Writes `<workdir>/eval_<split>.json` and the recall-curve PNG; prints the table."""
    path = os.path.join(self.exp.workdir, RESULTS_FILE.format(split=self.split))
    utils.write_json(path, results)
    plot_recall_curves(results["recall_curves"],
                       os.path.join(self.exp.workdir, f"eval_{self.split}.png"),
                       f"{results['dataset']} {self.split}, step {results['step']}")
    say(format_table(results))
    say(f"written to {path}")

  def scalars(self, results: dict) -> dict[str, float]:
    """Recall@k and median rank per direction, for the training log."""
    return {f"{direction}/{key}": float(value)
            for direction in ("text_to_image", "image_to_text")
            for key, value in results[direction].items() if not key.startswith("chance")}


def format_table(results: dict) -> str:
  """A markdown table of the retrieval results, with chance levels."""
  ks = sorted(int(key.split("@")[1]) for key in results["text_to_image"]
              if key.startswith("recall@"))
  header = "| direction | " + " | ".join(f"R@{k}" for k in ks) + " | median rank |"
  lines = [f"{results['dataset']} {results['split']}: {results['num_text_queries']} captions, "
           f"{results['gallery_images']} images (step {results['step']})", "",
           header, "|---" * (len(ks) + 2) + "|"]
  for name in ("text_to_image", "image_to_text"):
    r = results[name]
    cells = " | ".join(f"{100 * r[f'recall@{k}']:.1f}% (chance {100 * r[f'chance_recall@{k}']:.1f}%)"
                       for k in ks)
    lines.append(f"| {name.replace('_', ' ')} | {cells} | {r['median_rank']:.0f} |")
  s = results["searcher"]
  k, name = s["k"], searchers.DISPLAY_NAMES.get(s["name"], s["name"])
  recall = 100 * s[f"text_to_image_recall@{k}"]
  lines += ["", f"{name}: recall@{k} vs exact search = {s['recall_at_k_vs_exact']:.3f}; "
            f"text→image R@{k} through {name} = {recall:.1f}% "
            f"(build {s['build_s']:.2f}s, {s['queries']} queries in {s['search_s'] * 1e3:.1f} ms)"]
  return "\n".join(lines)
