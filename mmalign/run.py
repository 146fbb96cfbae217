"""The run sequence, in one place: train, evaluate, search, on one run context.

`launch.py` and `experiments/tables` both call `train_and_evaluate`, so what a
table cell measures is what `--mode=all` does.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from mmalign import experiment as experiment_lib
from mmalign import settings
from mmalign import workdir as workdir_lib
from mmalign.checkpoints import export
from mmalign.errors import UsageError
from mmalign.eval import evaluators as evaluators_lib
from mmalign.retrieval import cli as retrieval_cli
from mmalign.retrieval import search as search_lib
from mmalign.retrieval import searchers
from mmalign.train import state as train_state
from mmalign.train import trainer
from mmalign.utils import say


@dataclasses.dataclass
class Outcome:
  """What a run produced: the variables it ended with, their step, each evaluator's results."""
  variables: dict
  step: int
  results: dict[str, dict] = dataclasses.field(default_factory=dict)


def train_and_evaluate(exp: experiment_lib.Experiment, *, train: bool = True,
                       evaluate: bool = True) -> Outcome:
  """Trains (resuming) unless `train` is False, then runs the declared evaluators on the
  final variables (restored from the latest checkpoint when not training)."""
  evaluators = evaluators_lib.build(exp) if evaluate else None
  if train:
    state = trainer.train(exp, evaluators=evaluators)
    variables, step = jax.device_get(train_state.variables_of(state)), int(state["step"])
  else:
    variables, step = train_state.restore_variables(exp)
  results = evaluators.run(variables, step) if evaluators is not None else {}
  return Outcome(variables, step, results)


def execute(config, workdir: str, mode: str, *, query: str | None = None,
            k: int | None = None, query_image: str | None = None,
            export_to: tuple[str, str] | None = None) -> Outcome | None:
  """`launch.py`'s work once its flags are checked: the config is checked and the run
  context built once (nothing written yet), then `run` holds the workdir's lock."""
  # A published model (init.checkpoint) is evaluated, searched or exported without training.
  published = bool(settings.value(config, "init.checkpoint")) and mode in ("eval", "search",
                                                                          "export")
  if mode not in ("all", "train") and not published and not os.path.isdir(workdir):
    raise UsageError(f"--workdir {workdir!r} does not exist: run --mode=train first")
  exp = experiment_lib.prepare(config, workdir,
                               allow_new_tokenizer=mode in ("all", "train") or published)
  with workdir_lib.locked(workdir, process_index=jax.process_index()):
    return run(exp, mode, query=query, k=k, query_image=query_image, export_to=export_to)


def run(exp: experiment_lib.Experiment, mode: str, *, query: str | None = None,
        k: int | None = None, query_image: str | None = None,
        export_to: tuple[str, str] | None = None) -> Outcome | None:
  """What `launch.py --mode=<mode>` does, after the config and flags were checked.
  export_to: (folder, layout) for mode "export"."""
  config = exp.config
  k = config.retrieval.k if k is None else k
  if mode == "export":
    variables, step = train_state.restore_variables(exp)
    written = export.write(variables, exp.model, exp.tokenizer, export_to[1], export_to[0])
    say(f"exported step {step} as {export_to[1]}: {', '.join(written)}")
    return None
  if mode == "index":
    path = retrieval_cli.build_index_for_workdir(exp)
    print(f"indexes: {path} (images), {path}_text (captions)")
    return None
  if mode == "search" and query_image:
    hits, sheet = retrieval_cli.search_image_query(exp, query_image, k)
    _print_hits(f"search over the {config.eval.split} captions for the image {query_image!r}",
                hits, sheet)
    return None
  outcome = None
  if mode in ("all", "train", "eval"):
    outcome = train_and_evaluate(exp, train=mode in ("all", "train"),
                                 evaluate=mode in ("all", "eval"))
  if mode in ("all", "search"):
    variables, step = ((outcome.variables, outcome.step) if outcome is not None
                       else train_state.restore_variables(exp))
    query = query if mode == "search" else config.retrieval.example_query
    hits, sheet = search_lib.search(exp, variables, step, query, k=k, split=config.eval.split,
                                    scann_config=search_lib.scann_config(config))
    name = search_lib.searcher_of(config)[0]
    _print_hits(f"{searchers.DISPLAY_NAMES.get(name, name)} search over the "
                f"{config.eval.split} images for {query!r}", hits, sheet)
  return outcome


def _print_hits(title: str, hits, sheet: str) -> None:
  say(f"\n{title}:")
  for hit in hits:
    say(f"  {hit.rank:2d}. {hit.score:+.3f}  {hit.caption}")
  say(f"contact sheet: {sheet}")
