"""Evaluators declared in the config, built once per run and run by one function.

Each `config.evals` entry names a type (EVALUATORS), its split (default `eval.split`), its
options (settings.EVAL_OPTIONS) and optionally `every_steps`, to also run during training
(scalars to metrics.jsonl and TensorBoard). Without `config.evals`: retrieval on
`eval.split`, plus classification when `task.label` is set. Why declared: the launcher, the
tables and the trainer run the same list. A new evaluator is one class (`(exp, *, split,
**kwargs)`, `evaluate(variables, step)`, `report(results)`, `scalars(results)`) and one
EVALUATORS line."""

from __future__ import annotations

import dataclasses
from typing import Any

from mmalign import experiment as experiment_lib
from mmalign.eval import classification_evaluator, evaluator as retrieval_evaluator
from mmalign.eval import linear_probe_evaluator, zero_shot_evaluator
from mmalign.utils import say

EVALUATORS = {"retrieval": retrieval_evaluator.RetrievalEvaluator,
              "classification": classification_evaluator.ClassificationEvaluator,
              "zero_shot": zero_shot_evaluator.ZeroShotEvaluator,
              "linear_probe": linear_probe_evaluator.LinearProbeEvaluator}


@dataclasses.dataclass(frozen=True)
class Declared:
  """One `config.evals` entry, defaults filled in."""
  name: str
  type: str
  split: str
  every_steps: int | None = None
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def declared(config) -> list[Declared]:
  """`config.evals` as `Declared` entries, or the default list when it is unset."""
  split = config.eval.split
  if config.get("evals") is None:
    types = ["retrieval"] + (["classification"] if experiment_lib.task_label(config) else [])
    return [Declared(name, name, split) for name in types]
  blocks = {name: dict(block) for name, block in config.evals.items()}
  return [Declared(name, b.pop("type"), b.pop("split", split), b.pop("every_steps", None), b)
          for name, b in blocks.items()]


@dataclasses.dataclass
class Evaluators:
  """The built evaluators of one run, in declaration order."""
  built: list[tuple[Declared, Any]]

  def periodic(self, step: int) -> list[tuple[Declared, Any]]:
    """Those due at `step` of training (`every_steps` divides it)."""
    return [(d, e) for d, e in self.built if d.every_steps and step % d.every_steps == 0]

  def run(self, variables, step: int) -> dict[str, dict]:
    """Every evaluator on `variables`: results written, printed and returned by name."""
    results = {}
    for declaration, evaluator in self.built:
      results[declaration.name] = evaluator.evaluate(variables, step)
      evaluator.report(results[declaration.name])
    return results

  def scalars(self, variables, step: int) -> dict[str, float]:
    """The due evaluators' scalars, `<name>/<metric>`, for the training log."""
    scalars = {f"{declaration.name}/{key}": value
               for declaration, evaluator in self.periodic(step)
               for key, value in evaluator.scalars(evaluator.evaluate(variables, step)).items()}
    if scalars:
      say(f"step {step}: " + "  ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    return scalars


def build(exp: experiment_lib.Experiment) -> Evaluators:
  """Builds every declared evaluator once (unknown types were refused by settings.check)."""
  return Evaluators([(d, EVALUATORS[d.type](exp, split=d.split, **d.kwargs))
                     for d in declared(exp.config)])
