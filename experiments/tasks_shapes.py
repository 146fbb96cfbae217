"""Downstream tasks on shapes from a trained dual encoder's frozen embeddings.

  python -m experiments.tasks_shapes --workdir=workdirs/shapes
  python -m experiments.tasks_shapes --workdir=workdirs/shapes --split=validation \
      --out_dir=/tmp/shapes_tasks --config=experiments/configs/shapes.py

--config (default experiments/configs/shapes.py) must be the one the workdir was trained
with: the checkpoint refuses a different model. Heads are trained on the train split's
embeddings and scored on --split (held-out captions):

  (i)   image–text matching: text-only, image-only and fused probes, linear and MLP (every
        image and caption occurs once matched and once mismatched, so single-modality
        probes sit at 50%); the fused probe trained with modality dropout is also scored
        with text or image absent; "cosine" is the embeddings' own similarity;
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

from experiments.cli import run_script, write_results
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


def _probe_row(train_x, train_y, test_x, test_y, num_classes, settings, hidden=(),
               dropout=0.0) -> tuple[probe_lib.Probe, dict]:
  probe = probe_lib.train_probe(train_x, train_y, num_classes, hidden=hidden,
                                modality_dropout=dropout, **settings.train_kwargs())
  return probe, probe_lib.classification_report(test_y, probe.predict_proba(test_x))


def matching(train: Embedded, test: Embedded, settings: Settings) -> dict:
  """(i): results[negatives][model][input] = classification report on test pairs."""
  out = {}
  for negatives in settings.negatives:
    pairs = {name: st.matching_pairs(e.data.groups, e.data.labels,
                                     np.random.default_rng([settings.seed, k]),
                                     negatives=negatives)
             for k, (name, e) in enumerate((("train", train), ("test", test)))}
    views = {name: (e.text[pairs[name].caption_index], e.image[pairs[name].image_index])
             for name, e in (("train", train), ("test", test))}
    labels = {name: pairs[name].label for name in pairs}
    cosine = {name: np.sum(t * i, axis=1, keepdims=True) for name, (t, i) in views.items()}
    _, report = _probe_row(cosine["train"], labels["train"], cosine["test"], labels["test"],
                           2, settings)
    result = {"cosine": report}
    say(f"matching ({negatives} negatives) cosine: accuracy {report['accuracy']:.3f}")
    for model, hidden in (("linear", ()), ("mlp", settings.mlp_hidden)):
      result[model] = {}
      for name in INPUTS:
        _, report = _probe_row(probe_lib.probe_features(name, *views["train"]),
                               labels["train"],
                               probe_lib.probe_features(name, *views["test"]),
                               labels["test"], 2, settings, hidden)
        result[model][name] = report
        say(f"matching ({negatives} negatives) {model} {name}: accuracy "
            f"{report['accuracy']:.3f}, ROC-AUC {_fmt(report['roc_auc'])}")
      probe = probe_lib.train_probe(_fused(*views["train"]), labels["train"], 2,
                                    hidden=hidden, modality_dropout=settings.modality_dropout,
                                    **settings.train_kwargs())
      result[model]["fused+dropout"] = {
          absent: probe_lib.classification_report(
              labels["test"], probe.predict_proba(_fused(*views["test"], absent)))
          for absent in ABSENT}
      say(f"matching ({negatives} negatives) {model} fused+dropout: " + ", ".join(
          f"{a} {r['accuracy']:.3f}" for a, r in result[model]["fused+dropout"].items()))
    out[negatives] = result
  return out


def zero_shot_shapes(train: Embedded, test: Embedded, embed, settings: Settings) -> dict:
  """(ii): one-shape scenes' shape, by prompts alone and by a linear image probe."""
  classes = zero_shot.class_embeddings(embed, st.SHAPE_CLASSES, st.SHAPE_TEMPLATES)
  mask = {name: st.one_shape(e.data.labels) for name, e in (("train", train),
                                                             ("test", test))}
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
  _, result["image_probe"] = _probe_row(
      _fused(None, train.image[mask["train"]]), st.shape_targets(train.data.labels)[mask["train"]],
      _fused(None, test.image[mask["test"]]), targets, len(st.SHAPE_CLASSES), settings)
  say(f"zero-shot shapes ({len(targets)} one-shape scenes): accuracy "
      f"{result['zero_shot']['accuracy']:.3f} (chance {result['chance']:.2f}); linear image "
      f"probe {result['image_probe']['accuracy']:.3f}")
  return result


def tags(train: Embedded, test: Embedded, embed, settings: Settings) -> dict:
  """(iii): tag sets, zero-shot (threshold calibrated on train) vs trained heads."""
  targets = {name: st.tags_of(e.data.labels) for name, e in (("train", train),
                                                             ("test", test))}
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
                           f"{result[k]['micro_f1']:.3f}" for k in ("zero_shot", "linear",
                                                                     "mlp")))
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
      _, result[inp] = _probe_row(probe_lib.probe_features(inp, train.text, train.image),
                                  train_y, probe_lib.probe_features(inp, test.text, test.image),
                                  test_y, len(class_names), settings)
    probe = probe_lib.train_probe(_fused(train.text, train.image), train_y, len(class_names),
                                  modality_dropout=settings.modality_dropout,
                                  **settings.train_kwargs())
    result["fused+dropout"] = {absent: probe_lib.classification_report(
        test_y, probe.predict_proba(_fused(test.text, test.image, absent)))
        for absent in ABSENT}
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

  def embed(texts: list[str]) -> np.ndarray:
    return experiment_lib.embed_texts(exp, variables, list(texts))

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
  write_outputs(report, out_dir)
  say(format_markdown(report))
  say(f"written to {out_dir}/results.json, results.md, tasks.png "
      f"({report['total_s']:.0f} s)")
  return report


def _fmt(x) -> str:
  return "–" if x is None else f"{x:.3f}"


def format_markdown(report: dict) -> str:
  s = report["settings"]
  header = (f"JAX {report['jax_version']}, {report['date']}; workdir `{report['workdir']}`, "
            f"checkpoint step {report['step']}.  ")
  setup = (f"Heads trained on train ({report['num_train']} examples), scored on "
           f"{report['split']} ({report['num_test']}); {s['probe_steps']} AdamW steps, lr "
           f"{s['learning_rate']}, batch {s['batch_size']}, MLP hidden "
           f"{tuple(s['mlp_hidden'])}, modality dropout {s['modality_dropout']}.")
  matching_note = ("Every image and caption occurs once matched and once mismatched, so "
                   "text-only and image-only probes are at 50% by construction; chance is "
                   "50%. \"colors\" negatives share the number of shapes and the colours "
                   "with the true caption.")
  lines = [f"# Downstream tasks on {report['dataset']}", "",
           f"Command: `{report['command']}`  ", header, setup, "",
           "## (i) Image–text matching", "", matching_note, "",
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
  for method in ("zero_shot", "linear", "mlp"):
    r = t[method]
    lines.append(row(method.replace("_", "-"), f"{r['mAP']:.3f}", f"{r['micro_f1']:.3f}",
                     f"{r['macro_f1']:.3f}"))

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
  width = 0.8 / 4
  for k, inp in enumerate(INPUTS):
    axes.bar(np.arange(len(groups)) + (k - 1.5) * width,
             [report["matching"][n][m][inp]["accuracy"] for n, m in groups], width,
             label=inp, color=colours[inp])
  axes.bar(np.arange(len(groups)) + 1.5 * width,
           [report["matching"][n]["cosine"]["accuracy"] for n, _ in groups], width,
           label="cosine", color="tab:gray")
  axes.axhline(0.5, color="black", linestyle=":", linewidth=1, label="chance")
  axes.set_xticks(np.arange(len(groups)), [f"{m}\n{n} neg." for n, m in groups])
  axes.set_ylim(0, 1)
  axes.set_ylabel(f"accuracy ({report['split']})")
  axes.set_title("image–text matching")
  _legend_below(axes)

  axes = figure.add_subplot(1, 3, 2)
  names = list(report["attributes"])
  bars = [(inp, lambda r, inp=inp: r[inp]["accuracy"]) for inp in INPUTS] + [
      (absent, lambda r, a=absent: r["fused+dropout"][a]["accuracy"])
      for absent in ("text absent", "image absent")]
  width = 0.8 / len(bars)
  for k, (label, value) in enumerate(bars):
    axes.bar(np.arange(len(names)) + (k - (len(bars) - 1) / 2) * width,
             [value(report["attributes"][n]) for n in names], width,
             label=label if label in INPUTS else f"fused+dropout, {label}",
             color=colours[label])
  axes.scatter(np.arange(len(names)), [report["attributes"][n]["majority"] for n in names],
               marker="_", s=400, color="black", label="majority class", zorder=3)
  axes.set_xticks(np.arange(len(names)), names)
  axes.set_ylim(0, 1)
  axes.set_title("attributes (linear probes)")
  _legend_below(axes)

  axes = figure.add_subplot(1, 3, 3)
  labels, values, colors = [], [], []
  z = report["zero_shot_shapes"]
  if "zero_shot" in z:
    labels += ["shape\nzero-shot", "shape\nimage probe"]
    values += [z["zero_shot"]["accuracy"], z["image_probe"]["accuracy"]]
    colors += ["tab:cyan", "tab:orange"]
  for method in ("zero_shot", "linear", "mlp"):
    labels.append(f"tags mAP\n{method.replace('_', '-')}")
    values.append(report["tags"][method]["mAP"])
    colors.append("tab:cyan" if method == "zero_shot" else "tab:orange")
  axes.bar(np.arange(len(values)), values, color=colors)
  if "zero_shot" in z:
    axes.hlines(z["chance"], -0.4, 1.4, color="black", linestyle=":", label="shape chance")
    _legend_below(axes)
  axes.set_xticks(np.arange(len(values)), labels, fontsize=8)
  axes.set_ylim(0, 1)
  axes.set_title("zero-shot (cyan) vs trained (orange)")
  figure.suptitle(f"{report['dataset']} {report['split']}, step {report['step']}")
  save_figure(figure, path)


def _legend_below(axes) -> None:
  axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3,
              frameon=False)


def write_outputs(report: dict, out_dir: str) -> None:
  write_results(out_dir, report, format_markdown(report), plot, "tasks.png")


def _define_flags():
  """Defined on demand, so importing this module (tests) adds no global absl flags."""
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


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  run_script("experiments.tasks_shapes", argv, lambda command: run(
      f.config, f.workdir, out_dir=f.out_dir, split=f.split, command=command,
      settings=Settings(probe_steps=f.probe_steps, seed=f.seed)))


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main)
