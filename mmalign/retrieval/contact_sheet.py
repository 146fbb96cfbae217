"""One PNG per query showing what retrieval returned: the quickest check a human can do.

Drawn on matplotlib's Agg canvas directly: no display needed, the caller's pyplot backend
is left alone."""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_CAPTION_WIDTH = 22  # characters per caption line
_CAPTION_LINES = 3
_TITLE_WIDTH = 80
_FRAME_COLORS = {True: "#2ca02c", False: "#d62728"}  # green: correct, red: wrong
_QUERY_COLOR = "#1f77b4"  # blue: the query image of an image→text search


def _short(text: str, width: int, max_lines: int) -> str:
  """Wraps text to at most max_lines lines, ending in '…' when something was cut."""
  return textwrap.fill(str(text), width=width, max_lines=max_lines, placeholder=" …")


def _check_inputs(images: np.ndarray, captions: Sequence[str], scores: np.ndarray,
                  correct: np.ndarray | None) -> None:
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or images.shape[0] == 0:
    raise ValueError(f"images must be [k>0, h, w, c] with c in (1, 3, 4), "
                     f"got shape {images.shape}")
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {images.dtype}")
  k = images.shape[0]
  sizes = {"captions": len(captions), "scores": scores.shape[0],
           "correct": k if correct is None else correct.shape[0]}
  wrong = {name: n for name, n in sizes.items() if n != k}
  if wrong:
    raise ValueError(f"expected {k} entries (one per image), got {wrong}")


def _draw(ax, image: np.ndarray, label: str, frame_color: str | None) -> None:
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
  else:
    ax.imshow(image)
  ax.set(xticks=[], yticks=[])
  ax.set_xlabel(label, fontsize=8)
  if frame_color is not None:
    for spine in ax.spines.values():
      spine.set_edgecolor(frame_color)
      spine.set_linewidth(4)


def save_contact_sheet(path: str | os.PathLike, query_text: str, images, captions: Sequence[str],
                       scores, correct=None, columns: int = 5, query_image=None) -> None:
  """Writes a PNG: the query as title, then each retrieved image in rank order.

  images: [k, h, w, c] uint8, c in (1, 3, 4), c == 1 drawn in grey; captions: [k] str;
  scores: [k] float; correct: [k] bool or None, else a green (correct) or red (wrong) frame
  each. query_image: [h', w', c'] uint8 or None; when given (image→text search) it is drawn
  first, framed in blue and labelled "query". At most `columns` images per row; parent
  directories are created."""
  images = np.asarray(images)
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  correct = None if correct is None else np.asarray(correct, dtype=bool).reshape(-1)
  _check_inputs(images, captions, scores, correct)
  if query_image is not None:
    query_image = np.asarray(query_image)
    _check_inputs(query_image[None], ["query"], np.zeros(1), None)

  k = images.shape[0]
  offset = 0 if query_image is None else 1
  if columns < 1:
    raise ValueError(f"columns must be >= 1, got {columns}")
  columns = min(k + offset, columns)
  rows = -(-(k + offset) // columns)
  figure = Figure(figsize=(2.4 * columns, 2.9 * rows + 0.6), layout="constrained")
  FigureCanvasAgg(figure)
  figure.suptitle(_short(query_text, _TITLE_WIDTH, 2), fontsize=12)
  axes = figure.subplots(rows, columns, squeeze=False)  # [rows, columns]

  for slot, ax in enumerate(axes.flat, start=-offset):  # slot -1: the query image.
    if slot < 0:
      _draw(ax, query_image, "query", _QUERY_COLOR)
    elif slot >= k:
      ax.set_axis_off()
    else:
      caption = _short(captions[slot], _CAPTION_WIDTH, _CAPTION_LINES)
      _draw(ax, images[slot], f"#{slot + 1}  {caption}\nscore {scores[slot]:.3f}",
            None if correct is None else _FRAME_COLORS[bool(correct[slot])])

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, format="png", dpi=100)
