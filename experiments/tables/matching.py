"""Table 3, matching (design document §3.2.3): n captions ↔ n images, one-to-one.

Quickstart's InfoNCE model embeds the held-out test split; a problem of size n takes n
random caption groups and one random image of each, shuffled, and every matcher of
`mmalign.matching.MATCHERS` pairs them from the cosine similarities [n, n]. Accuracy is the
share of captions given their own image; a matcher that abstains (-1: mutual NN, Sinkhorn's
mutual argmax) is wrong on that row, and its "answered" column says how often it answered.
Hungarian and Sinkhorn enforce one-to-one, unlike nearest neighbour, which helps as n grows.
"""

from __future__ import annotations

import numpy as np

from experiments.tables import bases, runner
from experiments.tables.cells import Cell, register_kind
from experiments.tables.spec import Column, Panel, Row, Section, Table

SIZES = (10, 30, 100, 300, 765)  # 765: every caption group of unicode_glyphs/full test.
QUICK_SIZES = (4, 8, 16)
# Sinkhorn on cosine scores: epsilon ≈ 1 / the trained InfoNCE scale (~40), so the plan
# is about as sharp as the model's own softmax.
MATCHERS = {"nearest": {}, "mutual": {}, "hungarian": {},
            "sinkhorn": {"epsilon": 0.025, "num_iters": 300}}
ABSTAINING = ("mutual", "sinkhorn")


def draw_problem(rng: np.random.Generator, group_ids: np.ndarray, groups: np.ndarray, n: int):
  """(caption rows [n], gallery image rows [n], truth [n]): caption i's image is
  gallery[truth[i]]; one random image per chosen caption group, gallery shuffled."""
  images_of = {}
  for row, group in enumerate(groups):
    images_of.setdefault(int(group), []).append(row)
  captions = rng.choice(len(group_ids), size=n, replace=False)  # [n]
  images = np.array([rng.choice(images_of[int(group_ids[c])]) for c in captions])  # [n]
  order = rng.permutation(n)  # gallery[j] = images[order[j]]
  truth = np.argsort(order)  # The inverse permutation: gallery[truth[i]] = images[i].
  return captions, images[order], truth


def matching_accuracies(text_emb: np.ndarray, image_emb: np.ndarray, group_ids: np.ndarray,
                        groups: np.ndarray, *, sizes, draws: int, matchers: dict,
                        seed: int) -> dict[str, float]:
  """`<matcher>/n=<size>` (accuracy) and `<matcher>/n=<size>/matched`, means over draws.

  text_emb [captions, d] (row i = group_ids[i]), image_emb [images, d] (row j in group
  groups[j]); both L2-normalised. A size above the number of captions is capped
  (`n_used/n=<size>` says by how much).
  """
  from mmalign.matching import MATCHERS as REGISTERED  # pylint: disable=import-outside-toplevel
  from mmalign.matching import matching_accuracy  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  out = {}
  for size in sizes:
    n = min(int(size), len(group_ids))
    scores_of = {name: [] for name in matchers}
    for _ in range(draws):
      captions, gallery, truth = draw_problem(rng, group_ids, groups, n)
      scores = text_emb[captions] @ image_emb[gallery].T  # [n, n] cosine
      for name, kwargs in matchers.items():
        predicted = np.asarray(REGISTERED.get(name)(scores, **kwargs))
        scores_of[name].append((matching_accuracy(predicted, truth),
                                float(np.mean(predicted >= 0))))
    for name, values in scores_of.items():
      accuracy, matched = np.mean(values, axis=0)
      out[f"{name}/n={size}"] = float(accuracy)
      out[f"{name}/n={size}/matched"] = float(matched)
    out[f"n_used/n={size}"] = float(n)
  return out


@register_kind("matching", command="python launch.py --config={config} "
               "--workdir={workdir} --mode=train {overrides}",
               note="trains the model; the matching itself runs only in the table")
def train_and_match(cell: Cell) -> dict[str, float]:
  """Scores every matcher at every size on the cell's model (trained here or reused)."""
  import jax  # pylint: disable=import-outside-toplevel

  from mmalign import experiment as experiment_lib  # pylint: disable=import-outside-toplevel
  from mmalign.train import state as train_state  # pylint: disable=import-outside-toplevel
  from mmalign.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  from mmalign.train import trainer  # pylint: disable=import-outside-toplevel

  config = cell.config
  workdir = runner.trained_workdir(cell)
  if workdir is not None:
    print(f"matching: reusing the model in {workdir}", flush=True)
    exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
    variables, _ = train_state.restore_variables(exp)
  else:
    exp = experiment_lib.for_training(config, cell.workdir)
    variables = jax.device_get(train_state.variables_of(trainer.train(exp)))
  split = config.eval.split
  index = pipeline.index_split(sources.open_split(exp.builder, split, decode_images=False))
  image_emb = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, split),
                                          config.eval.batch_size)  # [images, d]
  text_emb = experiment_lib.embed_texts(exp, variables, index.group_captions)  # [groups, d]
  return matching_accuracies(text_emb, image_emb, index.group_ids, index.groups,
                             sizes=cell.params["sizes"], draws=cell.params["draws"],
                             matchers=cell.params["matchers"], seed=cell.seed)


def size_view(size: int):
  """A Row.view: every matcher's accuracy (and abstainers' answered share) at one size."""
  def view(metrics: dict) -> dict:
    shown = {name: metrics[f"{name}/n={size}"] for name in MATCHERS}
    shown.update({f"{name}/matched": metrics[f"{name}/n={size}/matched"] for name in ABSTAINING})
    return {**shown, "n_used": metrics[f"n_used/n={size}"]}
  return view


COLUMNS = (
    Column("nearest", "nearest neighbour"),
    Column("mutual", "mutual NN"),
    Column("hungarian", "Hungarian (exact)"),
    Column("sinkhorn", "Sinkhorn"),
    Column("mutual/matched", "mutual NN: answered", best=None),
    Column("sinkhorn/matched", "Sinkhorn: answered", best=None),
)


def sections(quick: bool) -> list[Section]:
  sizes = QUICK_SIZES if quick else SIZES
  params = {"sizes": list(sizes), "draws": 3 if quick else 10, "matchers": MATCHERS}
  rows = tuple(Row(f"n = {size}", kind="matching", params=params, view=size_view(size),
                   x=size) for size in sizes)
  data = "unicode_glyphs/tiny" if quick else "unicode_glyphs/full"
  return [Section(
      name="matching", base=bases.glyphs(quick), rows=rows, columns=COLUMNS,
      title=f"Matching accuracy vs problem size ({data} test, InfoNCE model)",
      notes=(f"{params['draws']} random problems per size and seed; one image per "
             "caption group; the model is trained per seed (`config.train.seed`)."),
      panels=(Panel("curves", ("nearest", "mutual", "hungarian", "sinkhorn"),
                    f"{data} test: matching accuracy vs n", xlabel="pairs to match (n)",
                    ylabel="matching accuracy", xscale="log"),))]


TABLE = Table(
    name="matching", title="Cross-modal matching (design document §3.2.3)",
    sections=sections, seeds=3,
    full_run_estimate=(f"~20 min: 3 glyph trainings × {bases.GLYPH_STEPS} steps (none if "
                       "objectives ran first) + a minute of matching per seed"))
