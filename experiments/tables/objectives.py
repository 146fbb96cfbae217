"""Table 2, alignment objectives (design document §3.2.3), on unicode_glyphs/full and openmoji.

The same dual encoder trained with each registered alignment loss, against the
closed-form baselines of experiments/procrustes_baseline.py, all scored by the retrieval
evaluator on the held-out test split. The "openmoji" section repeats the comparison on
colour emoji whose test names were never seen in training.
"""

from __future__ import annotations

from experiments.tables import bases
from experiments.tables.cells import prefix_view
from experiments.tables.spec import Column, Panel, Row, Section, Table

RETRIEVAL_COLUMNS = (
    Column("text_to_image/recall@1", "t→i R@1"),
    Column("text_to_image/recall@5", "t→i R@5"),
    Column("text_to_image/recall@10", "t→i R@10"),
    Column("image_to_text/recall@1", "i→t R@1"),
    Column("image_to_text/recall@5", "i→t R@5"),
    Column("image_to_text/recall@10", "i→t R@10"),
    Column("text_to_image/median_rank", "t→i median rank", fmt="float1", best="min"),
    Column("image_to_text/median_rank", "i→t median rank", fmt="float1", best="min"),
)
# R@1 and R@10 both ways: the retrieval columns of the tables that show fewer.
RECALL_1_10 = tuple(c for c in RETRIEVAL_COLUMNS if c.key.endswith(("recall@1", "recall@10")))

LOSS_ROWS = (
    Row("correspondence-matrix regression", {"loss.name": "correspondence"}),
    Row("InfoNCE", {"loss.name": "infonce"}),
    Row("sigmoid", {"loss.name": "sigmoid"}),
    Row("regression (text onto image)", {"loss.name": "regression"}),
)
# One procrustes cell per seed gives both rows (frozen towers' seed = train.seed).
BASELINE_ROWS = (
    Row("Procrustes on TF-IDF / pixel PCA", kind="procrustes",
        view=prefix_view("tfidf_pca/procrustes/")),
    Row("Procrustes on frozen random towers", kind="procrustes",
        view=prefix_view("frozen/procrustes/")),
)
QUICK_ROWS = ("correspondence-matrix regression", "InfoNCE", "Procrustes on TF-IDF / pixel PCA",
              "Procrustes on frozen random towers")


# openmoji: the objectives that carry the design document's claim, and both baselines;
# regression (text onto image) is left out to keep the section's run time down.
OPENMOJI_ROWS = ("correspondence-matrix regression", "InfoNCE", "sigmoid",
                 "Procrustes on TF-IDF / pixel PCA", "Procrustes on frozen random towers")
QUICK_OPENMOJI_ROWS = ("InfoNCE", "Procrustes on TF-IDF / pixel PCA")
NOTES = ("Queries are the split's distinct captions (t→i; any image of the caption's "
         "group is a hit) and its images (i→t), as in `mmalign/eval/evaluator.py`. "
         "Procrustes rows train nothing: an orthogonal map between frozen embeddings "
         "(TF-IDF of the caption pieces / pixel PCA, or the config's towers at "
         "initialisation) is fitted on the train pairs "
         "(`experiments/procrustes_baseline.py`).")
OPENMOJI_NOTES = ("One image per emoji and splits by emoji, so every test caption is a "
                  "name never seen in training (\"woman cook medium-dark skin tone\"): "
                  "retrieval has to compose the words it learnt. ")


def _section(name: str, title: str, base, names: tuple[str, ...], notes: str) -> Section:
  rows = tuple(r for r in LOSS_ROWS + BASELINE_ROWS if r.name in names)
  return Section(
      name=name, base=base, rows=rows, columns=RETRIEVAL_COLUMNS, title=title, notes=notes,
      panels=(Panel("bars", tuple(c.key for c in RETRIEVAL_COLUMNS[:3]),
                    f"{name}: text → image", ylabel="recall"),
              Panel("bars", tuple(c.key for c in RETRIEVAL_COLUMNS[3:6]),
                    f"{name}: image → text", ylabel="recall")))


def sections(quick: bool) -> list[Section]:
  glyph_rows = QUICK_ROWS if quick else tuple(r.name for r in LOSS_ROWS + BASELINE_ROWS)
  glyphs = "unicode_glyphs/tiny" if quick else "unicode_glyphs/full"
  emoji = "openmoji/tiny" if quick else "openmoji/full"
  return [
      _section("objectives", f"Alignment objectives: retrieval on {glyphs} test",
               bases.glyphs(quick), glyph_rows, NOTES),
      _section("openmoji", f"Alignment objectives: retrieval on {emoji} test (unseen names)",
               bases.openmoji(quick), QUICK_OPENMOJI_ROWS if quick else OPENMOJI_ROWS,
               OPENMOJI_NOTES + NOTES),
  ]


TABLE = Table(
    name="objectives", title="Alignment objectives (design document §3.2.3)",
    sections=sections, seeds=3,
    full_run_estimate=(f"~3 h in two sessions: `--sections=objectives` ~1.5 h (12 trainings "
                       f"× {bases.GLYPH_STEPS} steps, ~5 min each, + 3 Procrustes baselines, "
                       "~4 min each); `--sections=openmoji` ~1.5 h (9 trainings × "
                       f"{bases.OPENMOJI_STEPS} steps at ~2.6 s, + 3 Procrustes baselines)"))
