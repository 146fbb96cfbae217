"""Table 4, robustness (design document Q9, Q15, Q17): noisy pairs and missing modalities.

Sections: "noisy_pairs", retrieval on unicode_glyphs/full vs `data.noisy_pair_fraction`
(experiments/noisy_pairs.py runs one seed of it); "noisy_pairs_shapes", the multi-task
shapes model's classification and retrieval vs the same noise; "missing_modality", that
classifier when a share p of the test examples lacks its text or its image (even odds),
trained with and without `model.modality_dropout`. That curve is not sampled but mixed
from the evaluator's three scores (missing_modality_view), which only accuracy allows: F1
and ROC-AUC are not averages over examples.
"""

from __future__ import annotations

from experiments.tables import bases
from experiments.tables.objectives import RECALL_1_10, RETRIEVAL_COLUMNS
from experiments.tables.spec import Column, Panel, Row, Section, Table

NOISE = (0.0, 0.2, 0.4, 0.6)
SHAPES_NOISE = (0.0, 0.3, 0.6)
DROPOUT = (0.0, 0.5)
MISSING_RATES = (0.0, 0.25, 0.5, 0.75, 1.0)
QUICK_NOISE = (0.0, 0.5)

RETRIEVAL = RECALL_1_10 + RETRIEVAL_COLUMNS[6:7]  # And the t→i median rank.
CLASSIFICATION = (
    Column("classification/both/accuracy", "accuracy"),
    Column("classification/both/macro_f1", "macro-F1", fmt="float3"),
    Column("classification/both/roc_auc_ovr", "ROC-AUC", fmt="float3"),
)


def missing_modality_view(metrics: dict) -> dict:
  """Expected accuracy when a share p of the examples loses its text or its image."""
  both, text, image = (metrics[f"classification/{presence}/accuracy"]
                       for presence in ("both", "text_only", "image_only"))
  view = {f"missing@{p:g}": (1 - p) * both + p / 2 * (text + image) for p in MISSING_RATES}
  return {**view, "text_only": text, "image_only": image}


MISSING = tuple(Column(f"missing@{p:g}", f"p = {p:g}", x=p) for p in MISSING_RATES) + (
    Column("text_only", "text only"), Column("image_only", "image only"))


def _noise_rows(fractions) -> tuple[Row, ...]:
  return tuple(Row(f"{100 * f:.0f}% noisy pairs", {"data.noisy_pair_fraction": f}, x=f)
               for f in fractions)


def sections(quick: bool) -> list[Section]:
  glyphs, shapes = bases.glyphs(quick), bases.shapes_multitask(quick)
  glyph_data = "unicode_glyphs/tiny" if quick else "unicode_glyphs/full"
  shapes_data = "shapes/tiny" if quick else "shapes/full"
  noise_axis = "mismatched training pairs (fraction of each batch)"
  return [
      Section(
          name="noisy_pairs", base=glyphs, rows=_noise_rows(QUICK_NOISE if quick else NOISE),
          columns=RETRIEVAL, title=f"Retrieval vs noisy training pairs ({glyph_data} test)",
          notes="Evaluated on the clean held-out split.",
          panels=(Panel("curves", tuple(c.key for c in RETRIEVAL[:4]), xlabel=noise_axis,
                        ylabel="recall"),)),
      Section(
          name="noisy_pairs_shapes", base=shapes,
          rows=_noise_rows(QUICK_NOISE if quick else SHAPES_NOISE),
          columns=CLASSIFICATION + RETRIEVAL[:3],
          title=f"Classification (color1) and retrieval vs noisy pairs ({shapes_data} test)",
          notes=("A noisy pair keeps its caption's label, so the classifier sees "
                 "the right class with the wrong image."),
          panels=(Panel("curves", tuple(c.key for c in CLASSIFICATION),
                        "shapes: classifying color1", xlabel=noise_axis),
                  Panel("curves", tuple(c.key for c in RETRIEVAL[:3]), "shapes: retrieval",
                        xlabel=noise_axis, ylabel="recall"))),
      Section(
          name="missing_modality", base=shapes,
          rows=tuple(Row(f"modality dropout {d:g}", {"model.modality_dropout": d},
                         view=missing_modality_view) for d in DROPOUT),
          columns=MISSING,
          title=f"Classification accuracy vs missing-modality rate p ({shapes_data} test)",
          notes=("p: share of test examples that lose one modality (text or image, even "
                 "odds); the expected accuracy (1 − p)·both + p/2·(text only + image "
                 "only) from the classification evaluator's three scores. Modality "
                 "dropout d: in training, a share d of the examples loses one modality."),
          panels=(Panel("curves", tuple(c.key for c in MISSING[:len(MISSING_RATES)]),
                        xlabel="test examples missing one modality (p)",
                        ylabel="accuracy"),)),
  ]


TABLE = Table(
    name="robustness", title="Robustness to noisy pairs and missing modalities",
    sections=sections, seeds=3,
    full_run_estimate=(f"~1.7 h: 12 glyph trainings × {bases.GLYPH_STEPS} steps (~5 min; 3 "
                       "shared with objectives) + 12 shapes trainings × "
                       f"{bases.SHAPES_STEPS} steps (~4 min)"))
