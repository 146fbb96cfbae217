"""Table 2, alignment objectives (design document §3.2.3), on unicode_glyphs/full.

The same dual encoder trained with each registered alignment loss (correspondence-
matrix regression, InfoNCE, sigmoid, regression of text onto image) against the
closed-form baselines of experiments/procrustes_baseline.py (an orthogonal map
between frozen spaces, fitted on the train pairs), all scored by the retrieval
evaluator on the held-out test split.
"""

from __future__ import annotations

from experiments.tables import bases
from experiments.tables.cells import procrustes_view
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

LOSS_ROWS = (
    Row("correspondence-matrix regression", {"loss.name": "correspondence"}),
    Row("InfoNCE", {"loss.name": "infonce"}),
    Row("sigmoid", {"loss.name": "sigmoid"}),
    Row("regression (text onto image)", {"loss.name": "regression"}),
)
# One procrustes cell per seed gives both rows (frozen towers' seed = train.seed).
BASELINE_ROWS = (
    Row("Procrustes on TF-IDF / pixel PCA", kind="procrustes",
        view=procrustes_view("tfidf_pca")),
    Row("Procrustes on frozen random towers", kind="procrustes",
        view=procrustes_view("frozen")),
)
QUICK_ROWS = ("correspondence-matrix regression", "InfoNCE", "Procrustes on TF-IDF / pixel PCA",
              "Procrustes on frozen random towers")


def sections(quick: bool) -> list[Section]:
  rows = LOSS_ROWS + BASELINE_ROWS
  if quick:
    rows = tuple(r for r in rows if r.name in QUICK_ROWS)
  data = "unicode_glyphs/tiny" if quick else "unicode_glyphs/full"
  return [Section(
      name="objectives", base=bases.glyphs(quick), rows=rows, columns=RETRIEVAL_COLUMNS,
      title=f"Alignment objectives: retrieval on {data} test",
      notes=("Queries are the split's distinct captions (t→i; any image of the caption's "
             "group is a hit) and its images (i→t), as in `mmalign/eval/evaluator.py`. "
             "Procrustes rows train nothing: an orthogonal map between frozen embeddings "
             "(TF-IDF of the caption pieces / pixel PCA, or the config's towers at "
             "initialisation) is fitted on the train pairs "
             "(`experiments/procrustes_baseline.py`)."),
      panels=(Panel("bars", tuple(c.key for c in RETRIEVAL_COLUMNS[:3]), "text → image",
                    ylabel="recall"),
              Panel("bars", tuple(c.key for c in RETRIEVAL_COLUMNS[3:6]), "image → text",
                    ylabel="recall")))]


TABLE = Table(
    name="objectives", title="Alignment objectives (design document §3.2.3)",
    sections=sections, seeds=3,
    full_run_estimate=(f"~1.5 h: 12 trainings × {bases.GLYPH_STEPS} steps (~5 min each) "
                       "+ 3 Procrustes baselines (~4 min each)"))
