"""Cross-modal retrieval evaluation on a held-out split, exact and with ScaNN.

Queries are the split's distinct captions (text→image) and its images
(image→text). A text→image hit is any image of the caption's group, e.g. any
font's drawing of the named character. Exact search (a matmul + top-k) is the
ground truth; ScaNN answers the same text queries and is scored against it.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from mmalign import experiment as experiment_lib
from mmalign.data import pipeline, sources
from mmalign.eval import retrieval_metrics as rm
from mmalign.plots import plot_recall_curves
from mmalign.retrieval import search as retrieval_search
from mmalign.retrieval.scann_index import ScannIndex
from mmalign.train.metrics_log import say

RESULTS_FILE = "eval_{split}.json"
CURVE_MAX_K = 50  # The recall curve PNG spans k = 1..50 (or up to the largest eval k).


def evaluate(config, workdir: str, variables=None, step: int | None = None) -> dict:
  """Computes, prints and writes `<workdir>/eval_<split>.json`; returns the results.

  Evaluates `variables` if given, else the latest checkpoint in the workdir.
  """
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  if variables is None:
    variables, step = exp.restore_variables()
  split = config.eval.split
  index = pipeline.index_split(sources.open_split(exp.builder, split, decode_images=False))
  started = time.perf_counter()
  image_emb = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, split),
                                          config.eval.batch_size)  # [images, d]
  text_emb = experiment_lib.embed_texts(exp, variables, index.group_captions)  # [groups, d]
  embed_s = time.perf_counter() - started
  ks = tuple(config.eval.ks)

  ranks = {"text_to_image": rm.first_hit_ranks(text_emb, index.group_ids, image_emb,
                                               index.groups),
           "image_to_text": rm.first_hit_ranks(image_emb, index.groups, text_emb,
                                               index.group_ids)}
  curve_k = max(CURVE_MAX_K, *ks)
  chance = {"text_to_image": [rm.chance_recall_at_k(index.group_ids, index.groups, k)
                              for k in range(1, curve_k + 1)],
            "image_to_text": [rm.chance_recall_at_k(index.groups, index.group_ids, k)
                              for k in range(1, curve_k + 1)]}
  t2i = rm.retrieval_metrics(ranks["text_to_image"], ks)
  i2t = rm.retrieval_metrics(ranks["image_to_text"], ks)
  for k in ks:
    t2i[f"chance_recall@{k}"] = chance["text_to_image"][k - 1]
    i2t[f"chance_recall@{k}"] = chance["image_to_text"][k - 1]

  k = config.retrieval.k
  started = time.perf_counter()
  scann = ScannIndex.build(image_emb, retrieval_search.scann_config(config))
  build_s = time.perf_counter() - started
  started = time.perf_counter()
  _, scann_ids = scann.search(text_emb, k)
  search_s = time.perf_counter() - started
  _, exact_ids = rm.exact_top_k(text_emb, image_emb, k)
  # Slots ScaNN could not fill come back as id -1 (retrieval.vectors.MISSING_ID): no hit.
  found = scann_ids >= 0
  scann_hits = (found & (index.groups[np.where(found, scann_ids, 0)]
                         == index.group_ids[:, None])).any(axis=1)
  results = {
      "dataset": f"{config.data.name}/{config.data.config}", "split": split, "step": step,
      "num_text_queries": int(index.num_groups), "gallery_images": int(len(index.groups)),
      "text_to_image": t2i, "image_to_text": i2t,
      "scann": {"recall_at_k_vs_exact": rm.recall_vs_exact(
                    scann_ids, exact_ids, queries=text_emb, gallery=image_emb), "k": k,
                f"text_to_image_recall@{k}": float(scann_hits.mean()),
                "brute_force": scann.is_brute_force, "build_s": build_s,
                "search_s": search_s, "queries": int(len(text_emb))},
      "embed_s": embed_s,
  }
  write_json(os.path.join(workdir, RESULTS_FILE.format(split=split)), results)
  plot_recall_curves(ranks, chance, os.path.join(workdir, f"eval_{split}.png"),
                     f"{results['dataset']} {split}, step {step}", curve_k)
  say(format_table(results))
  say(f"written to {os.path.join(workdir, RESULTS_FILE.format(split=split))}")
  return results


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
  s = results["scann"]
  k = s["k"]
  scann_recall = 100 * s[f"text_to_image_recall@{k}"]
  lines += ["", f"ScaNN: recall@{k} vs exact search = {s['recall_at_k_vs_exact']:.3f}; "
            f"text→image R@{k} through ScaNN = {scann_recall:.1f}% "
            f"(build {s['build_s']:.2f}s, {s['queries']} queries in {s['search_s'] * 1e3:.1f} ms)"]
  return "\n".join(lines)


def write_json(path: str, data: dict) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
  os.replace(tmp, path)
