"""Table 7, retrieval efficiency: ScaNN against exact search on trained galleries.

Galleries are the image embeddings of the objectives table's InfoNCE and
correspondence-matrix models (unicode_glyphs/full, every seed): the test split alone (what
`launch.py` evaluates) or the images of all splits, where only test images can be hits.
Queries are the test split's distinct captions.

Per method (METHODS, numpy the ground truth) the columns: recall@K against exact search
(tie-aware, as trained galleries hold identical embeddings), text→image R@K, batched
queries/s (best of REPEATS) and build seconds. "ScaNN tuned" is tuned on the validation
captions, held out from the test queries. Queries/s are only comparable between cells run
one at a time (--parallel=1) on an idle machine.
"""

from __future__ import annotations

import time

import numpy as np

from experiments.tables import bases, cells, runner
from experiments.tables.spec import Column, Panel, Row, Section, Table

K = 10
REPEATS = 3
TARGET_RECALL = 0.95
METHODS = {  # Metric prefix → row name.
    "numpy": "exact: numpy matmul + argpartition",
    "exact_tiled": "exact: tiled top-k (ExactIndex)",
    "scann_brute_force": "exact: ScaNN brute force",
    "scann_default": "ScaNN, launch.py's build",
    "scann_tuned": f"ScaNN tuned for recall {TARGET_RECALL}",
}
MODELS = {"InfoNCE": {"loss.name": "infonce"},
          "correspondence-matrix": {"loss.name": "correspondence"}}
GALLERIES = {"test": "test split images", "all": "images of all splits"}

COLUMNS = (
    Column("recall_vs_exact", f"recall@{K} vs exact", fmt="float3"),
    Column(f"text_to_image_recall@{K}", f"t→i R@{K}"),
    Column("queries_per_s", "queries/s", fmt="int"),
    Column("build_s", "build s", fmt="float3", best="min"),
)


def _embeddings(config, workdir: str, gallery: str):
  """(gallery [n, d], groups [n], test caption queries [g, d], their groups [g],
  validation caption queries [v, d]); unit rows. Images of other splits get group -1."""
  # pylint: disable=import-outside-toplevel
  from mmalign import experiment as experiment_lib
  from mmalign.data import pipeline, sources
  from mmalign.train import state as train_state
  from mmalign.train import trainer
  # pylint: enable=import-outside-toplevel
  exp = experiment_lib.for_training(config, workdir)
  trainer.train(exp)  # Returns at once when the workdir is finished.
  variables, _ = train_state.restore_variables(exp)
  test = config.eval.split

  def captions(split):
    return pipeline.index_split(sources.open_split(exp.builder, split, decode_images=False))

  def images(split):
    return experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, split),
                                       config.eval.batch_size)

  test_index = captions(test)
  rows, groups = [images(test)], [test_index.groups]
  for split in ("train", "validation") if gallery == "all" else ():
    rows.append(images(split))
    groups.append(np.full(len(rows[-1]), -1, np.int64))
  queries = experiment_lib.embed_texts(exp, variables, test_index.group_captions)
  held_out = experiment_lib.embed_texts(exp, variables, captions("validation").group_captions)
  unit = lambda x: np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True),
                                        np.float32)
  return (unit(np.concatenate(rows)), np.concatenate(groups), unit(queries),
          test_index.group_ids, unit(held_out))


@cells.register_kind(
    "retrieval_efficiency",
    command="python launch.py --config={config} --workdir={workdir} {overrides} && "
            "python -m benchmarks.retrieval --real_workdir={workdir} --real_config={config}",
    note="the benchmark covers the test gallery with a recall/QPS sweep, not the tuned "
         "point or the all-splits gallery")
def retrieval_efficiency(cell: cells.Cell) -> dict[str, float]:
  """Metrics `<method>/<column key>` for one trained model and gallery."""
  # pylint: disable=import-outside-toplevel
  from mmalign.eval import retrieval_metrics as rm
  from mmalign.retrieval import search as retrieval_search
  from mmalign.retrieval import tuning
  from mmalign.retrieval.exact_index import ExactConfig, ExactIndex
  from mmalign.retrieval.scann_index import ScannConfig, ScannIndex
  # pylint: enable=import-outside-toplevel
  # The finished train_eval cell of the same config and seed, else this cell's own.
  gallery, groups, queries, query_groups, held_out = _embeddings(
      cell.config, runner.trained_workdir(cell) or cell.workdir, cell.params["gallery"])
  numpy_qps, truth = tuning.batched_qps(
      lambda q: tuning.exact_neighbours(gallery, q, K), queries, REPEATS)

  default_config = retrieval_search.scann_config(cell.config)
  builders = {
      "exact_tiled": lambda: ExactIndex.build(gallery, ExactConfig(num_neighbors=K)),
      "scann_brute_force": lambda: ScannIndex.build(
          gallery, ScannConfig(num_neighbors=K, brute_force_below=len(gallery) + 1)),
      "scann_default": lambda: ScannIndex.build(gallery, default_config),
      "scann_tuned": lambda: tuning.tune(gallery, held_out, target_recall=TARGET_RECALL, k=K,
                                         config=default_config, repeats=1)[0],
  }
  indexes = {}  # name → (index, build seconds); every index is built before any is timed.
  for name, build in builders.items():
    started = time.perf_counter()
    indexes[name] = build(), time.perf_counter() - started
  found = {"numpy": (truth, numpy_qps, 0.0)}
  for name, (index, build_s) in indexes.items():
    qps, ids = tuning.batched_qps(lambda q, index=index: index.search(q, K)[1], queries,
                                  REPEATS)
    found[name] = (ids, qps, build_s)
  metrics = {"gallery_size": float(len(gallery)), "queries": float(len(queries))}
  for name, (ids, qps, build_s) in found.items():
    valid = ids >= 0
    hits = (valid & (groups[np.where(valid, ids, 0)] == query_groups[:, None])).any(axis=1)
    metrics.update({
        f"{name}/recall_vs_exact": rm.recall_vs_exact(ids, truth, queries=queries,
                                                      gallery=gallery),
        f"{name}/text_to_image_recall@{K}": float(hits.mean()),
        f"{name}/queries_per_s": qps, f"{name}/build_s": build_s})
  return metrics


def sections(quick: bool) -> list[Section]:
  data = "unicode_glyphs/tiny" if quick else "unicode_glyphs/full"
  models = dict(list(MODELS.items())[:1]) if quick else MODELS
  out = []
  for gallery, what in GALLERIES.items():
    for model, overrides in models.items():
      rows = tuple(Row(name, overrides, kind="retrieval_efficiency",
                       params={"gallery": gallery}, view=cells.prefix_view(f"{method}/"))
                   for method, name in METHODS.items())
      out.append(Section(
          name=f"{gallery}_{model.split('-')[0].lower()}", base=bases.glyphs(quick),
          rows=rows, columns=COLUMNS,
          title=f"{model} model, {data}: {what} searched by the test captions",
          notes=("One trained model per seed; every row searches the same embeddings. "
                 "Recall is against the numpy exact search, counting ties with the "
                 f"{K}th neighbour; t→i R@{K} is the task metric through each search."),
          panels=(Panel("scatter", ("queries_per_s", "recall_vs_exact"),
                        f"{model}, {what}: recall against speed", xscale="log",
                        ylim=None),)))
  return out


TABLE = Table(
    name="retrieval_efficiency", title="Retrieval efficiency: ScaNN vs exact search",
    sections=sections, seeds=3,
    full_run_estimate=("~25 min after the objectives table (its InfoNCE and "
                       "correspondence models are reused): 12 cells of embedding, "
                       "indexing and timing; ~1.5 h more if they must be trained"))
