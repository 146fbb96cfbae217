"""Downstream tasks on shapes from a trained dual encoder's frozen embeddings.

  python -m experiments.tasks_shapes --workdir=workdirs/shapes [--split=validation]

--config (default experiments/configs/shapes.py) must be the one the workdir was trained
with: the checkpoint refuses a different model. Heads are trained on the train split's
embeddings and scored on --split (held-out captions):

  (i)   image–text matching: text-only, image-only and fused probes, linear and MLP; the
        fused probe trained with modality dropout is also scored with text or image absent;
        "cosine" is the embeddings' own similarity;
  (ii)  zero-shot shape classification of one-shape scenes, against a linear image probe;
  (iii) multi-label tags: zero-shot tag prompts vs trained heads on the image;
  (iv)  attributes (num_shapes, shape1, color1, relation) from text / image / fused.

Writes results.json, results.md and tasks.png to --out_dir.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time

import jax
import numpy as np
from matplotlib.figure import Figure

from experiments import cli
from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign.data import sources
from mmalign.errors import UsageError
from mmalign.plots import save_figure
from mmalign.utils import say
from mmalign.tasks import annotation, zero_shot
from mmalign.tasks import probe as probe_lib
from mmalign.tasks import shapes_tasks as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUTS = ("text", "image", "fused")
TAG_METHODS = ("zero_shot", "linear", "mlp")
ABSENT = {"both": (True, True), "text absent": (False, True), "image absent": (True, False)}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the heads are trained with; recorded in results.json."""
  probe_steps: int = 1000
  learning_rate: float = 3e-3
  weight_decay: float = 1e-4
  batch_size: int = 1024  # Examples per AdamW step (full batch when the split is smaller).
  mlp_hidden: tuple[int, ...] = (256,)
  modality_dropout: float = 0.5
  negatives: tuple[str, ...] = ("colors", "random")
  attributes: tuple[str, ...] = ("num_shapes", "shape1", "color1", "relation")
  seed: int = 0

  def train_kwargs(self) -> dict:
    return {"steps": self.probe_steps, "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay, "batch_size": self.batch_size,
            "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class Embedded:
  """One split's labels and embeddings; row i of both is example i."""
  data: st.ShapesSplit
  text: np.ndarray  # [n, d] embedding of each example's own caption
  image: np.ndarray  # [n, d]


def embed_split(exp: experiment_lib.Experiment, variables, split: str) -> Embedded:
  data = st.read_split(sources.open_split(exp.builder, split, decode_images=False))
  started = time.perf_counter()
  image = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, split),
                                      exp.config.eval.batch_size)
  unique, inverse = np.unique(np.array(data.captions), return_inverse=True)
  text = experiment_lib.embed_texts(exp, variables, list(unique))[inverse.reshape(-1)]
  say(f"embedded {split}: {len(data)} images, {len(unique)} distinct captions "
      f"({time.perf_counter() - started:.1f} s)")
  return Embedded(data, text, image)


def _fused(text, image, absent: str = "both") -> np.ndarray:
  present = np.broadcast_to(np.array(ABSENT[absent]), (len(image), 2))
  return probe_lib.fused_features(text, image, present)


def _probe_report(train_x, train_y, test_x, test_y, num_classes, settings, hidden=()) -> dict:
  probe = probe_lib.train_probe(train_x, train_y, num_classes, hidden=hidden,
                                **settings.train_kwargs())
  return probe_lib.classification_report(test_y, probe.predict_proba(test_x))


def _dropout_reports(train_views, train_y, test_views, test_y, num_classes, settings,
                     hidden=()) -> dict:
  """The fused probe trained with modality dropout, scored with each of ABSENT."""
  probe = probe_lib.train_probe(_fused(*train_views), train_y, num_classes, hidden=hidden,
                                modality_dropout=settings.modality_dropout,
                                **settings.train_kwargs())
  return {absent: probe_lib.classification_report(
      test_y, probe.predict_proba(_fused(*test_views, absent))) for absent in ABSENT}


def matching(train: Embedded, test: Embedded, settings: Settings) -> dict:
  """(i): results[negatives][model][input] = classification report on test pairs."""
  out = {}
  for negatives in settings.negatives:
    views, labels = {}, {}  # Per split: (text, image) of each pair [p, d], label [p].
    for k, (name, e) in enumerate((("train", train), ("test", test))):
      pairs = st.matching_pairs(e.data.groups, e.data.labels,
                                np.random.default_rng([settings.seed, k]), negatives=negatives)
      views[name] = e.text[pairs.caption_index], e.image[pairs.image_index]
      labels[name] = pairs.label
    cosine = {name: np.sum(t * i, axis=1, keepdims=True) for name, (t, i) in views.items()}
    result = {"cosine": _probe_report(cosine["train"], labels["train"], cosine["test"],
                                      labels["test"], 2, settings)}
    say(f"matching ({negatives} negatives) cosine: accuracy {result['cosine']['accuracy']:.3f}")
    for model, hidden in (("linear", ()), ("mlp", settings.mlp_hidden)):
      result[model] = {}
      for name in INPUTS:
        result[model][name] = report = _probe_report(
            probe_lib.probe_features(name, *views["train"]), labels["train"],
            probe_lib.probe_features(name, *views["test"]), labels["test"], 2, settings, hidden)
        say(f"matching ({negatives} negatives) {model} {name}: accuracy "
            f"{report['accuracy']:.3f}, ROC-AUC {_fmt(report['roc_auc'])}")
      result[model]["fused+dropout"] = _dropout_reports(
          views["train"], labels["train"], views["test"], labels["test"], 2, settings, hidden)
      say(f"matching ({negatives} negatives) {model} fused+dropout: " + ", ".join(
          f"{a} {r['accuracy']:.3f}" for a, r in result[model]["fused+dropout"].items()))
    out[negatives] = result
  return out


def zero_shot_shapes(train: Embedded, test: Embedded, embed, settings: Settings) -> dict:
  """(ii): one-shape scenes' shape, by prompts alone and by a linear image probe."""
  classes = zero_shot.class_embeddings(embed, st.SHAPE_CLASSES, st.SHAPE_TEMPLATES)
  mask = {"train": st.one_shape(train.data.labels), "test": st.one_shape(test.data.labels)}
  result = {"num_test_scenes": int(mask["test"].sum()), "chance": 1 / len(st.SHAPE_CLASSES),
            "templates": list(st.SHAPE_TEMPLATES)}
  if not mask["test"].any() or not mask["train"].any():
    say("zero-shot shapes: no one-shape scene in a split; skipped")
    return result
  targets = st.shape_targets(test.data.labels)[mask["test"]]
  logits = zero_shot.zero_shot_logits(test.image[mask["test"]], classes)
  result["majority"] = float(np.bincount(targets).max() / len(targets))
  result["zero_shot"] = probe_lib.classification_report(
      targets, np.asarray(jax.nn.softmax(logits, axis=1)))
  result["image_probe"] = _probe_report(
      _fused(None, train.image[mask["train"]]), st.shape_targets(train.data.labels)[mask["train"]],
      _fused(None, test.image[mask["test"]]), targets, len(st.SHAPE_CLASSES), settings)
  say(f"zero-shot shapes ({len(targets)} one-shape scenes): accuracy "
      f"{result['zero_shot']['accuracy']:.3f} (chance {result['chance']:.2f}); linear image "
      f"probe {result['image_probe']['accuracy']:.3f}")
  return result


def tags(train: Embedded, test: Embedded, embed, settings: Settings) -> dict:
  """(iii): tag sets, zero-shot (threshold calibrated on train) vs trained heads."""
  targets = {"train": st.tags_of(train.data.labels), "test": st.tags_of(test.data.labels)}
  tag_emb = zero_shot.prompt_ensemble(embed, [st.tag_prompts(t) for t in st.TAGS])
  scores = {name: annotation.zero_shot_tag_scores(e.image, tag_emb)
            for name, e in (("train", train), ("test", test))}
  threshold = annotation.best_threshold(scores["train"], targets["train"])
  result = {"tags": list(st.TAGS),
            "zero_shot": annotation.annotation_report(targets["test"], scores["test"],
                                                      threshold)}
  for model, hidden in (("linear", ()), ("mlp", settings.mlp_hidden)):
    head = annotation.train_multilabel_head(_fused(None, train.image), targets["train"],
                                            hidden=hidden, **settings.train_kwargs())
    result[model] = annotation.annotation_report(
        targets["test"], head.predict(_fused(None, test.image)), 0.5)
  say("tags: " + ", ".join(f"{k} mAP {result[k]['mAP']:.3f} micro-F1 "
                           f"{result[k]['micro_f1']:.3f}" for k in TAG_METHODS))
  return result


def attributes(train: Embedded, test: Embedded, settings: Settings) -> dict:
  """(iv): linear probes per attribute and input, plus the dropout-trained fused one."""
  out = {}
  for name in settings.attributes:
    train_y, class_names = st.attribute_labels(train.data.labels, name)
    test_y, _ = st.attribute_labels(test.data.labels, name)
    result = {"classes": list(class_names),
              "majority": float(np.mean(test_y == np.bincount(train_y).argmax()))}
    for inp in INPUTS:
      result[inp] = _probe_report(probe_lib.probe_features(inp, train.text, train.image),
                                  train_y, probe_lib.probe_features(inp, test.text, test.image),
                                  test_y, len(class_names), settings)
    result["fused+dropout"] = _dropout_reports((train.text, train.image), train_y,
                                               (test.text, test.image), test_y,
                                               len(class_names), settings)
    say(f"attribute {name}: " + ", ".join(f"{inp} {result[inp]['accuracy']:.3f}"
                                          for inp in INPUTS)
        + "; fused+dropout " + ", ".join(f"{a} {r['accuracy']:.3f}"
                                         for a, r in result["fused+dropout"].items()))
    out[name] = result
  return out


def run(config, workdir: str, *, out_dir: str, split: str = "test",
        settings: Settings = Settings(), command: str = "") -> dict:
  """Loads the workdir's latest checkpoint, runs the four tasks, writes the report."""
  if config.data.name != "shapes":
    raise UsageError(f"these tasks need the shapes dataset, got data.name="
                     f"{config.data.name!r} (config key 'data.name')")
  if split == "train":
    raise UsageError("--split=train: heads are trained on train; score a held-out split "
                     "(test or validation)")
  if not os.path.isdir(os.path.join(workdir, experiment_lib.TOKENIZER_DIR)):
    # Checked before `prepare`, which would first build the dataset if it is missing.
    raise UsageError(f"--workdir {workdir!r} holds no trained model: train it with "
                     "launch.py --mode=train first")
  started = time.perf_counter()
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  variables, step = train_state.restore_variables(exp)
  say(f"{workdir}: checkpoint step {step}; tasks on {config.data.name}/"
      f"{config.data.config}, heads trained on train, scored on {split}")
  train, test = embed_split(exp, variables, "train"), embed_split(exp, variables, split)
  embed = lambda texts: experiment_lib.embed_texts(exp, variables, list(texts))  # noqa: E731
  report = {
      "command": command, "jax_version": jax.__version__,
      "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
      "workdir": workdir, "step": step,
      "dataset": f"{config.data.name}/{config.data.config}", "split": split,
      "num_train": len(train.data), "num_test": len(test.data),
      "settings": dataclasses.asdict(settings),
      "matching": matching(train, test, settings),
      "zero_shot_shapes": zero_shot_shapes(train, test, embed, settings),
      "tags": tags(train, test, embed, settings),
      "attributes": attributes(train, test, settings),
  }
  report["total_s"] = time.perf_counter() - started
  cli.write_results(out_dir, report, format_markdown(report), plot, "tasks.png")
  say(format_markdown(report))
  say(f"written to {out_dir}/results.json, results.md, tasks.png "
      f"({report['total_s']:.0f} s)")
  return report


def _fmt(x) -> str:
  return "–" if x is None else f"{x:.3f}"


def format_markdown(report: dict) -> str:
  s = report["settings"]
  lines = [f"# Downstream tasks on {report['dataset']}", "",
           f"Command: `{report['command']}`  ",
           f"JAX {report['jax_version']}, {report['date']}; workdir `{report['workdir']}`, "
           f"checkpoint step {report['step']}.  ",
           f"Heads trained on train ({report['num_train']} examples), scored on "
           f"{report['split']} ({report['num_test']}); {s['probe_steps']} AdamW steps, lr "
           f"{s['learning_rate']}, batch {s['batch_size']}, MLP hidden "
           f"{tuple(s['mlp_hidden'])}, modality dropout {s['modality_dropout']}.", "",
           "## (i) Image–text matching", "",
           "Every image and caption occurs once matched and once mismatched, so text-only and "
           "image-only probes are at 50% by construction; chance is 50%. \"colors\" negatives "
           "share the number of shapes and the colours with the true caption.", "",
           "| negatives | head | input | accuracy | macro F1 | ROC-AUC |",
           "|---|---|---|---|---|---|"]

  def row(*cells) -> str:
    return "| " + " | ".join(cells) + " |"

  def scores(r) -> tuple[str, str, str]:
    return f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", _fmt(r["roc_auc"])

  for negatives, result in report["matching"].items():
    lines.append(row(negatives, "–", "cosine of the embeddings", *scores(result["cosine"])))
    for model in ("linear", "mlp"):
      for inp in INPUTS:
        lines.append(row(negatives, model, inp, *scores(result[model][inp])))
      for absent, r in result[model]["fused+dropout"].items():
        lines.append(row(negatives, model, f"fused + dropout, {absent}", *scores(r)))

  z = report["zero_shot_shapes"]
  lines += ["", "## (ii) Zero-shot shape classification (one-shape scenes)", ""]
  if "zero_shot" in z:
    lines += [f"{z['num_test_scenes']} scenes, {len(z['templates'])} prompts per shape.", "",
              "| method | accuracy | macro F1 |", "|---|---|---|",
              row("zero-shot prompts", *scores(z["zero_shot"])[:2]),
              row("linear probe on images (trained)", *scores(z["image_probe"])[:2]),
              row("chance / majority class", f"{z['chance']:.3f} / {z['majority']:.3f}", "–")]
  else:
    lines.append("Skipped: no one-shape scene in a split.")

  t = report["tags"]
  tags_note = (f"Tags: {', '.join(t['tags'])}. Zero-shot: cosine with each tag's prompt "
               "ensemble, one threshold maximising micro-F1 on train; heads: sigmoid per "
               "tag on the image embedding, threshold 0.5.")
  lines += ["", "## (iii) Multi-label tags", "", tags_note, "",
            "| method | mAP | micro F1 | macro F1 |", "|---|---|---|---|"]
  lines += [row(m.replace("_", "-"), *(f"{t[m][k]:.3f}" for k in ("mAP", "micro_f1", "macro_f1")))
            for m in TAG_METHODS]

  attributes_note = ("shape1 / color1 / relation follow the caption's wording (which shape "
                     "it names first), which an image of two shapes does not show.")
  lines += ["", "## (iv) Attributes (linear probes, accuracy)", "", attributes_note, "",
            row("attribute", "majority", "text", "image", "fused",
                "fused + dropout, text absent", "fused + dropout, image absent"),
            "|---|---|---|---|---|---|---|"]
  for name, r in report["attributes"].items():
    d = r["fused+dropout"]
    lines.append(row(name, *(f"{x:.3f}" for x in (
        r["majority"], r["text"]["accuracy"], r["image"]["accuracy"], r["fused"]["accuracy"],
        d["text absent"]["accuracy"], d["image absent"]["accuracy"]))))
  lines += ["", "![tasks](tasks.png)", ""]
  return "\n".join(lines)


def plot(report: dict, path: str) -> None:
  """Three panels: matching accuracy, attribute accuracy, zero-shot vs trained."""
  figure = Figure(figsize=(15, 5.2), layout="constrained")
  colours = {"text": "tab:blue", "image": "tab:orange", "fused": "tab:green",
             "text absent": "tab:olive", "image absent": "tab:purple"}

  axes = figure.add_subplot(1, 3, 1)
  groups = [(n, m) for n in report["matching"] for m in ("linear", "mlp")]
  _grouped_bars(axes, len(groups), [
      (inp, [report["matching"][n][m][inp]["accuracy"] for n, m in groups], colours[inp])
      for inp in INPUTS] + [
      ("cosine", [report["matching"][n]["cosine"]["accuracy"] for n, _ in groups], "tab:gray")])
  axes.axhline(0.5, color="black", linestyle=":", linewidth=1, label="chance")
  axes.set_xticks(np.arange(len(groups)), [f"{m}\n{n} neg." for n, m in groups])
  axes.set_ylim(0, 1)
  axes.set_ylabel(f"accuracy ({report['split']})")
  axes.set_title("image–text matching")
  _legend_below(axes)

  axes = figure.add_subplot(1, 3, 2)
  names = list(report["attributes"])
  rows = [report["attributes"][n] for n in names]
  _grouped_bars(axes, len(names), [
      (inp, [r[inp]["accuracy"] for r in rows], colours[inp]) for inp in INPUTS] + [
      (f"fused+dropout, {a}", [r["fused+dropout"][a]["accuracy"] for r in rows], colours[a])
      for a in ("text absent", "image absent")])
  axes.scatter(np.arange(len(names)), [r["majority"] for r in rows],
               marker="_", s=400, color="black", label="majority class", zorder=3)
  axes.set_xticks(np.arange(len(names)), names)
  axes.set_ylim(0, 1)
  axes.set_title("attributes (linear probes)")
  _legend_below(axes)

  axes = figure.add_subplot(1, 3, 3)
  z = report["zero_shot_shapes"]
  bars = [("shape\nzero-shot", z["zero_shot"]["accuracy"], "tab:cyan"),
          ("shape\nimage probe", z["image_probe"]["accuracy"], "tab:orange")
          ] if "zero_shot" in z else []
  bars += [(f"tags mAP\n{m.replace('_', '-')}", report["tags"][m]["mAP"],
            "tab:cyan" if m == "zero_shot" else "tab:orange") for m in TAG_METHODS]
  axes.bar(np.arange(len(bars)), [v for _, v, _ in bars], color=[c for *_, c in bars])
  if "zero_shot" in z:
    axes.hlines(z["chance"], -0.4, 1.4, color="black", linestyle=":", label="shape chance")
    _legend_below(axes)
  axes.set_xticks(np.arange(len(bars)), [label for label, *_ in bars], fontsize=8)
  axes.set_ylim(0, 1)
  axes.set_title("zero-shot (cyan) vs trained (orange)")
  figure.suptitle(f"{report['dataset']} {report['split']}, step {report['step']}")
  save_figure(figure, path)


def _grouped_bars(axes, groups: int, series: list[tuple[str, list[float], str]]) -> None:
  """Bars of each (label, values [groups], colour) side by side within each group."""
  width = 0.8 / len(series)
  for k, (label, values, colour) in enumerate(series):
    axes.bar(np.arange(groups) + (k - (len(series) - 1) / 2) * width, values, width,
             label=label, color=colour)


def _legend_below(axes) -> None:
  axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3,
              frameon=False)


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file(
      "config", os.path.join(ROOT, "experiments", "configs", "shapes.py"),
      "The config the workdir was trained with.", lock_config=True)
  flags.DEFINE_string("workdir", None, "A trained shapes workdir (launch.py --mode=train).")
  flags.DEFINE_string("split", "test", "Held-out split the heads are scored on.")
  flags.DEFINE_string("out_dir", "experiments/results/shapes_tasks",
                      "Where results.json, results.md and tasks.png go.")
  flags.DEFINE_integer("probe_steps", Settings.probe_steps, "AdamW steps per head.")
  flags.DEFINE_integer("seed", Settings.seed, "Seed of pairs and head initialisation.")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  cli.main("experiments.tasks_shapes", _define_flags, lambda f, command: run(
      f.config, f.workdir, out_dir=f.out_dir, split=f.split, command=command,
      settings=Settings(probe_steps=f.probe_steps, seed=f.seed)))
