"""Procrustes baseline: how much retrieval one rotation between frozen spaces buys.

  python -m experiments.procrustes_baseline --config=experiments/configs/quickstart.py \
      --contrastive_eval=experiments/results/quickstart/eval_test.json

Two kinds of frozen embeddings, neither trained on pairs: the config's towers and
projection heads at initialisation (seed config.train.seed), and TF-IDF over the tokenizer's
pieces / raw pixels, each PCA-reduced to --pca_dim (default model.embed_dim). For each, an
orthogonal Procrustes map fitted on the train pairs moves the held-out captions into the
image space; "no alignment" compares the spaces as they are. Retrieval is scored as the
evaluator scores it, so a trained model's eval JSON (--contrastive_eval, from
`launch.py --mode=eval`) sits in the same table.

Writes results.json, results.md and recall.png to --out_dir. The tokenizer is trained on
the train captions into --workdir/tokenizer unless one is there.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time

import jax
import numpy as np
from matplotlib.figure import Figure

from experiments import cli
from mmalign import experiment as experiment_lib
from mmalign.alignment import fit_procrustes_map
from mmalign.data import pipeline, sources
from mmalign.errors import UsageError
from mmalign.eval import retrieval_metrics as rm
from mmalign.plots import save_figure
from mmalign.utils import say

DIRECTIONS = ("text_to_image", "image_to_text")


@dataclasses.dataclass
class Split:
  index: pipeline.SplitIndex  # group_ids [c], group_captions [c], groups [n]
  pixels: np.ndarray  # [n, h, w, c] uint8, in split order


def load_split(exp: experiment_lib.Experiment, split: str) -> Split:
  index = pipeline.index_split(sources.open_split(exp.builder, split, decode_images=False))
  source = sources.open_split(exp.builder, split)
  return Split(index, pipeline.decode_images(source, np.arange(len(source))))


def _unit_rows(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def frozen_encoder_embeddings(exp, train: Split, test: Split, batch_size: int):
  """The config's towers + projection heads at initialisation: unit rows [*, embed_dim]."""
  variables = exp.init_variables(exp.config.train.seed)
  # [c, embed_dim] and [n, embed_dim]; images normalised a batch at a time.
  texts = lambda split: experiment_lib.embed_texts(exp, variables, split.index.group_captions)
  images = lambda split: experiment_lib.apply_in_batches(
      exp, "embed_image", variables, split.pixels, batch_size, prepare=exp.normalization)
  return texts(train), images(train), texts(test), images(test)


def token_counts(tokenizer, captions: list[str]) -> np.ndarray:
  """[c, vocab] float32 bag of the tokenizer's pieces (what the model reads, truncated)."""
  ids = tokenizer.encode(captions)  # [c, max_length], PAD_ID = 0
  counts = np.zeros((len(captions), tokenizer.vocab_size), np.float32)
  rows = np.repeat(np.arange(len(captions)), ids.shape[1])
  np.add.at(counts, (rows, ids.reshape(-1)), 1.0)
  counts[:, 0] = 0.0  # Padding is not a word.
  return counts


def tfidf(train_counts: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Unit rows of counts · idf, idf = log((1 + c) / (1 + df)) + 1 from the train captions."""
  df = np.count_nonzero(train_counts, axis=0)  # [vocab]
  idf = np.log((1.0 + len(train_counts)) / (1.0 + df)) + 1.0
  return _unit_rows(counts * idf.astype(np.float32))


def pca(train: np.ndarray, dim: int, max_rows: int, seed: int):
  """(mean [f], components [f, dim]) from the SVD of at most `max_rows` random train rows
  (enough for the leading directions, and cheap)."""
  if len(train) > max_rows:
    train = train[np.random.default_rng(seed).choice(len(train), max_rows, replace=False)]
  mean = train.mean(axis=0)
  _, _, vt = np.linalg.svd(train - mean, full_matrices=False)  # [min(n, f), f]
  return mean, vt[:dim].T


def classical_embeddings(exp, train: Split, test: Split, dim: int, max_rows: int):
  """TF-IDF of caption pieces and raw pixels, each PCA-reduced to `dim`: unit rows."""
  seed = exp.config.train.seed
  train_counts = token_counts(exp.tokenizer, train.index.group_captions)
  text_train = tfidf(train_counts, train_counts)
  text_test = tfidf(train_counts, token_counts(exp.tokenizer, test.index.group_captions))
  text_pca = pca(text_train, dim, max_rows, seed)
  pixels_train = train.pixels.reshape(len(train.pixels), -1).astype(np.float32) / 255.0
  pixels_test = test.pixels.reshape(len(test.pixels), -1).astype(np.float32) / 255.0
  image_pca = pca(pixels_train, dim, max_rows, seed)
  project = lambda x, mean_basis: _unit_rows((x - mean_basis[0]) @ mean_basis[1])
  return (project(text_train, text_pca), project(pixels_train, image_pca),
          project(text_test, text_pca), project(pixels_test, image_pca))


def score(test: Split, captions: np.ndarray, images: np.ndarray, ks) -> dict:
  """Retrieval metrics in both directions, as `mmalign.eval.evaluator` computes them."""
  groups, group_ids = test.index.groups, test.index.group_ids
  ranks = {"text_to_image": rm.first_hit_ranks(captions, group_ids, images, groups),
           "image_to_text": rm.first_hit_ranks(images, groups, captions, group_ids)}
  return {name: rm.retrieval_metrics(r, ks) for name, r in ranks.items()}


def aligned_rows(family: str, embeddings, train: Split, test: Split, ks) -> list[dict]:
  """"no alignment" and "Procrustes" rows for one family of frozen embeddings."""
  text_train, image_train, text_test, image_test = embeddings
  rows = [{"embeddings": family, "alignment": "none", **score(test, text_test, image_test, ks)}]
  started = time.perf_counter()
  # The train pairs: the row of `index.group_captions` that describes each image [n].
  caption_of_image = np.searchsorted(train.index.group_ids, train.index.groups)
  fitted = fit_procrustes_map(text_train[caption_of_image], image_train)
  mapped = _unit_rows(fitted.apply(text_test)).astype(np.float32)  # [c, d] in image space
  rows.append({"embeddings": family, "alignment": "Procrustes",
               "fit_s": time.perf_counter() - started, **score(test, mapped, image_test, ks)})
  return rows


def contrastive_row(path: str, dataset: str, split: str) -> dict:
  """The trained model's figures from an evaluator JSON of the same dataset and split."""
  try:
    with open(path) as f:
      results = json.load(f)
  except OSError as e:
    raise UsageError(f"--contrastive_eval {path!r} cannot be read: {e.strerror}") from None
  if (results.get("dataset"), results.get("split")) != (dataset, split):
    raise UsageError(f"--contrastive_eval {path!r} is {results.get('dataset')} "
                     f"{results.get('split')}, this run {dataset} {split}")
  return {"embeddings": f"trained contrastive (step {results.get('step')})",
          "alignment": "trained", "source": path,
          **{name: results[name] for name in DIRECTIONS}}


def chance_row(test: Split, ks) -> dict:
  sides = {"text_to_image": (test.index.group_ids, test.index.groups),
           "image_to_text": (test.index.groups, test.index.group_ids)}
  return {d: {f"recall@{k}": rm.chance_recall_at_k(*sides[d], k) for k in ks} for d in DIRECTIONS}


def format_markdown(report: dict) -> str:
  ks = report["ks"]
  header = " | ".join(f"{d} R@{k}" for d in ("t→i", "i→t") for k in ks)
  lines = [f"# Procrustes baseline on {report['dataset']} ({report['split']})", "",
           f"Command: `{report['command']}`  ",
           (f"Date: {report['date']}, JAX {report['jax_version']}, "
            f"{report['num_text_queries']} caption queries, {report['gallery_images']} images; "
            f"Procrustes fitted on {report['fit_pairs']} train pairs."), "",
           f"| embeddings | alignment | {header} | t→i median rank | i→t median rank |",
           "|---|---|" + "---|" * (2 * len(ks) + 2)]
  for row in report["rows"] + [dict(report["chance"], embeddings="chance", alignment="—")]:
    cells = [f"{100 * row[d][f'recall@{k}']:.1f}%" for d in DIRECTIONS for k in ks]
    medians = [f"{row[d]['median_rank']:.0f}" if "median_rank" in row[d] else "—"
               for d in DIRECTIONS]
    lines.append(f"| {row['embeddings']} | {row['alignment']} | {' | '.join(cells)} | "
                 f"{' | '.join(medians)} |")
  lines += ["", ("Retrieval as in `mmalign/eval/evaluator.py`: text→image queries are the "
                 "distinct captions, any image of the caption's group is a hit; ties count "
                 "against the model. Figure: `recall.png`."), ""]
  return "\n".join(lines)


def plot_recall_bars(report: dict, path: str) -> None:
  """One panel per direction: recall@k bars per row, chance as a dotted line per k."""
  ks, rows = report["ks"], report["rows"]
  figure = Figure(figsize=(11, 4.8), layout="constrained")
  width = 0.8 / len(rows)
  for panel, direction in enumerate(DIRECTIONS):
    axes = figure.add_subplot(1, 2, panel + 1)
    for i, row in enumerate(rows):
      values = [row[direction][f"recall@{k}"] for k in ks]
      axes.bar(np.arange(len(ks)) + (i - (len(rows) - 1) / 2) * width, values, width,
               label=f"{row['embeddings']}: {row['alignment']}")
    for j, k in enumerate(ks):
      chance = report["chance"][direction][f"recall@{k}"]
      axes.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles=":")
    axes.set_xticks(np.arange(len(ks)), [f"R@{k}" for k in ks])
    axes.set_ylim(0, 1)
    axes.set_title(direction.replace("_to_", " → "))
    axes.grid(alpha=0.3, axis="y")
  figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center",
                ncols=min(len(rows), 3), fontsize=8, title="dotted: chance",
                title_fontsize=8)
  figure.suptitle(f"{report['dataset']} {report['split']}: frozen embeddings + Procrustes")
  save_figure(figure, path)


def run(config, *, workdir: str, out_dir: str, split: str = "test",
        contrastive_eval: str | None = None, pca_dim: int | None = None,
        pca_rows: int = 10_000, command: str = "") -> dict:
  """Computes every row, writes the reports to `out_dir` and returns the report dict."""
  if split == "train":
    raise UsageError("--split=train would score the map on the pairs it was fitted on; "
                     "use a held-out split (validation, test)")
  started = time.perf_counter()
  timings: dict[str, float] = {}  # Seconds per stage.
  since = lambda t: time.perf_counter() - t

  exp = experiment_lib.for_training(config, workdir)
  dataset = f"{config.data.name}/{config.data.config}"
  ks = tuple(int(k) for k in config.eval.ks)
  contrastive = contrastive_row(contrastive_eval, dataset, split) if contrastive_eval else None
  say(f"loading {dataset} train and {split} (decoding images)")
  t = time.perf_counter()
  train, test = load_split(exp, "train"), load_split(exp, split)
  timings["load_s"] = since(t)
  say(f"  train: {len(train.pixels)} pairs ({train.index.num_groups} captions); {split}: "
      f"{test.index.num_groups} captions, {len(test.pixels)} images ({timings['load_s']:.0f} s)")

  say("frozen random encoders: embedding train and test, Procrustes")
  t = time.perf_counter()
  frozen = frozen_encoder_embeddings(exp, train, test, config.eval.batch_size)
  rows = aligned_rows("frozen random encoders", frozen, train, test, ks)
  timings["frozen_s"] = since(t)
  dim = min(pca_dim or config.model.embed_dim, train.index.num_groups,
            int(np.prod(train.pixels.shape[1:])), pca_rows)
  say(f"TF-IDF / pixel PCA to {dim} dims, Procrustes "
      f"(frozen encoders took {timings['frozen_s']:.0f} s)")
  t = time.perf_counter()
  classical = classical_embeddings(exp, train, test, dim, pca_rows)
  rows += aligned_rows(f"TF-IDF / pixel PCA ({dim}d)", classical, train, test, ks)
  timings["classical_s"] = since(t)
  if contrastive:
    rows.append(contrastive)

  timings["total_s"] = since(started)
  report = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "jax_version": jax.__version__, "dataset": dataset, "split": split, "ks": list(ks),
            "num_text_queries": int(test.index.num_groups),
            "gallery_images": len(test.pixels), "fit_pairs": len(train.pixels),
            "pca_dim": dim, "pca_rows": pca_rows, "seed": int(config.train.seed),
            "rows": rows, "chance": chance_row(test, ks), "timings": timings}
  cli.write_results(out_dir, report, format_markdown(report), plot_recall_bars, "recall.png")
  say(format_markdown(report))
  say(f"written to {out_dir}/results.json, results.md, recall.png "
      f"({timings['total_s']:.0f} s)")
  return report


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config.",
                                  lock_config=True)
  flags.DEFINE_string("split", "test", "Held-out split to score.")
  flags.DEFINE_string("workdir", "workdirs/procrustes", "Holds the tokenizer (trained on "
                      "the train captions if absent).")
  flags.DEFINE_string("out_dir", "experiments/results/procrustes_unicode_glyphs",
                      "Where results.json, results.md and recall.png go.")
  flags.DEFINE_string("contrastive_eval", None, "eval_<split>.json of a trained model "
                      "(launch.py --mode=eval), shown as a row; omitted if unset.")
  flags.DEFINE_integer("pca_dim", None, "PCA width of the TF-IDF / pixel embeddings "
                       "(default model.embed_dim).")
  flags.DEFINE_integer("pca_rows", 10_000, "Random train rows the PCA is fitted on.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  cli.main("experiments.procrustes_baseline", _define_flags, lambda f, command: run(
      f.config, workdir=f.workdir, out_dir=f.out_dir, split=f.split,
      contrastive_eval=f.contrastive_eval, pca_dim=f.pca_dim, pca_rows=f.pca_rows,
      command=command))
