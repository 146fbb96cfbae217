"""Table 1, fusion ablation (design document §3.2.2, §6.1): classification on shapes.

Every registered fusion module (models/fusion.py) in the multi-task shapes model
(bases.MULTITASK), scored by the classification evaluator on the held-out test split, on
shapes/full and on shapes/full_colourless (the sections' notes say why both). The
single-modality rows come from one more model, concat fusion trained with
`model.modality_dropout=1`, so its classifier has learned each modality alone; the plain
concat model never saw a missing modality, so its own text-only score is not used.
"""

from __future__ import annotations

import dataclasses

from experiments.tables import bases
from experiments.tables.cells import prefix_view
from experiments.tables.spec import Column, Panel, Row, Section, Table

COLUMNS = (
    Column("accuracy", "accuracy"),
    Column("macro_f1", "macro-F1", fmt="float3"),
    Column("roc_auc_ovr", "ROC-AUC (one vs rest)", fmt="float3"),
)


def _fusion_row(name: str, fusion: str, **kwargs) -> Row:
  overrides = {"model.fusion": fusion}
  overrides.update({f"model.fusion_kwargs.{fusion}.{k}": v for k, v in kwargs.items()})
  return Row(name, overrides, view=prefix_view("classification/both/"))


UNIMODAL = {"model.modality_dropout": 1.0}
ROWS = (
    Row("text only (concat, dropout 1, image hidden)", UNIMODAL,
        view=prefix_view("classification/text_only/")),
    Row("image only (concat, dropout 1, text hidden)", UNIMODAL,
        view=prefix_view("classification/image_only/")),
    _fusion_row("concatenation", "concat"),
    # α = 0.5: WeightedSum's default (fixed, and the learned scalar's initial value).
    _fusion_row("weighted sum, fixed α = 0.5", "weighted_sum", alpha_mode="fixed"),
    _fusion_row("weighted sum, learned α", "weighted_sum", alpha_mode="scalar"),
    _fusion_row("weighted sum, gate α(t, i)", "weighted_sum", alpha_mode="gate"),
    _fusion_row("cross-attention (text → image)", "cross_attention"),
    _fusion_row("joint transformer", "joint_transformer"),
    _fusion_row("correspondence matrix", "correspondence"),
)
QUICK_ROWS = ("text only (concat, dropout 1, image hidden)",
              "image only (concat, dropout 1, text hidden)", "concatenation",
              "weighted sum, gate α(t, i)")
# Both unimodal rows (one model) and the gate: 2 cells, so the quick table stays at 5
# (tests/tables/test_runner.py).
QUICK_COLOURLESS_ROWS = QUICK_ROWS[:2] + QUICK_ROWS[3:]


LABEL_NOTE = ("The label is the colour of the shape the caption names first (6 colours; "
              "the label set's \"none\" never occurs for it). ")


def sections(quick: bool) -> list[Section]:
  rows = tuple(r for r in ROWS if r.name in QUICK_ROWS) if quick else ROWS
  size = "tiny" if quick else "full"
  base = bases.shapes_multitask(quick)
  colourless = dataclasses.replace(
      base, overrides={**base.overrides, "data.config": f"{size}_colourless"})
  panels = (Panel("bars", ("accuracy", "macro_f1", "roc_auc_ovr"), ylabel="score"),)
  return [
      Section(
          name="fusion", base=base, rows=rows, columns=COLUMNS,
          title=f"Fusion: classifying color1 on shapes/{size} test",
          notes=(LABEL_NOTE + "On shapes every label is also spelled out in the caption, "
                 "so the text-only row is a near ceiling; the image-only row shows what "
                 "the pixels alone give (which shape is \"first\" is only defined by the "
                 "caption)."),
          panels=panels),
      Section(
          name="colourless", base=colourless, columns=COLUMNS,
          rows=tuple(r for r in rows if not quick or r.name in QUICK_COLOURLESS_ROWS),
          title=f"Fusion: classifying color1 on shapes/{size}_colourless test",
          notes=(LABEL_NOTE + "The captions leave the colours out (\"a small circle above "
                 "a large square\"), so text alone can only guess the colour and image "
                 "alone cannot tell which shape is first: the label needs both."),
          panels=panels),
  ]


TABLE = Table(
    name="fusion", title="Fusion ablation (design document §3.2.2, §6.1)",
    sections=sections, seeds=3,
    full_run_estimate=(f"~3.5 h in two sessions, ~1.75 h per section (`--sections=fusion`, "
                       f"`--sections=colourless`): 24 shapes trainings × "
                       f"{bases.SHAPES_STEPS} steps at batch {bases.SHAPES_BATCH} each "
                       "(~4.5 min; the joint transformer ~9)"))
