"""Every config value checked before any work starts, in one place.

`check` covers each key's type, range or registry and the combinations no builder sees;
`check_dataset` what needs the built dataset; `value` is the one home of a key's default.
Why one table: a bad key fails before the workdir, dataset or devices are touched.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from mmalign.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Rule:
  """A scalar config key: its type, the values allowed, and its default if absent."""
  kind: str  # A kind `_describe` names, or "choice" (one of `choices`).
  low: float | None = None  # Inclusive; for "ints", of each item.
  high: float | None = None  # Exclusive unless `high_included`.
  high_included: bool = False
  choices: tuple | Callable[[], tuple] = ()  # For "choice"; a callable reads a registry.
  optional: bool = False  # None allowed.
  default: Any = None
  required: bool = True  # False: a config may lack it; `default` then applies.


def _names(registry_path: str) -> Callable[[], tuple]:
  """Lazily the names of a registry or tuple (`module:ATTRIBUTE`), so imports stay light."""
  def names() -> tuple:
    import importlib  # pylint: disable=import-outside-toplevel
    module, attribute = registry_path.split(":")
    found = getattr(importlib.import_module(module), attribute)
    return tuple(found.names() if hasattr(found, "names") else found)
  return names


RULES: dict[str, Rule] = {
    "data.name": Rule("str"),  # A built-in dataset, else one prepared in data.data_dir.
    "data.features": Rule("strmap", default={}, required=False),
    "data.splits": Rule("strmap", default={}, required=False),
    "data.config": Rule("str", optional=True),  # None: a dataset without configs.
    "data.data_dir": Rule("str", optional=True),
    "data.max_shift": Rule("int", low=0),
    "data.noisy_pair_fraction": Rule("float", low=0.0, high=1.0, default=0.0, required=False),
    "data.sampling": Rule("choice", choices=_names("mmalign.data.sampling:SAMPLINGS"),
                          default="captions", required=False),
    "data.image_size": Rule("int", low=1, optional=True, default=None, required=False),
    "data.random_crop_min_area": Rule("float", low=0.01, high=1.0, high_included=True,
                                      optional=True, default=None, required=False),
    "data.random_flip": Rule("bool", default=False, required=False),
    "data.input_threads": Rule("int", low=1, default=2, required=False),
    "text.vocab_size": Rule("int", low=8),
    "text.max_length": Rule("int", low=1),
    "text.lowercase": Rule("bool"),
    "text.unicode_normalization": Rule("choice", choices=("NFKC", "NFC", "NFKD", "NFD", "none")),
    "text.model_type": Rule("choice", choices=("unigram", "bpe", "word", "char")),
    "model.text_encoder": Rule("choice", choices=_names("mmalign.models.build:TEXT_ENCODERS")),
    "model.image_encoder": Rule("choice",
                                choices=_names("mmalign.models.build:IMAGE_ENCODERS")),
    "model.fusion": Rule("choice", choices=_names("mmalign.models.build:FUSIONS"),
                         optional=True, required=False),
    "model.embed_dim": Rule("int", low=1),
    "model.init_scale": Rule("float", low=1e-6),
    "model.modality_dropout": Rule("float", low=0.0, high=1.0, high_included=True, default=0.0,
                                   required=False),
    "loss.name": Rule("choice", choices=_names("mmalign.losses.objective:LOSSES")),
    "loss.kernel.impl": Rule("choice", choices=_names("kernels.api:IMPLS"), default="auto",
                             required=False),
    "loss.distributed": Rule("choice", choices=("all_gather", "ring"), optional=True,
                             required=False),
    "loss.matching_weight": Rule("float", low=0.0, default=0.0, required=False),
    "loss.task_weight": Rule("float", low=0.0, default=0.0, required=False),
    "task.label": Rule("str", optional=True, required=False),
    "train.seed": Rule("int", low=0, high=2**31),
    "train.batch_size": Rule("int", low=1),
    "train.steps": Rule("int", low=1),
    "train.learning_rate": Rule("float", low=0.0),
    "train.warmup_steps": Rule("int", low=0),
    "train.weight_decay": Rule("float", low=0.0),
    "train.grad_clip_norm": Rule("float", low=0.0, optional=True),
    "train.fsdp_min_size": Rule("int", low=1, default=2 ** 14, required=False),
    "train.micro_batches": Rule("int", low=1, default=1, required=False),
    "train.gradient_cache": Rule("bool", default=False, required=False),
    "train.gradient_cache_loop": Rule("choice", choices=("scan", "host"), default="scan",
                                      required=False),
    "train.compute_dtype": Rule("choice", choices=("float32", "bfloat16"), default="float32",
                                required=False),
    "train.optimizer_moments_dtype": Rule("choice", choices=("float32", "bfloat16"),
                                          default="float32", required=False),
    "train.on_nonfinite": Rule("choice", choices=("stop", "skip"), default="stop",
                               required=False),
    "train.log_every": Rule("int", low=1),
    "train.checkpoint_every": Rule("int", low=1),
    "train.keep_checkpoints": Rule("int", low=1),
    "eval.split": Rule("str"),
    "eval.ks": Rule("ints", low=1),
    "eval.batch_size": Rule("int", low=1),
    "retrieval.searcher": Rule("choice", choices=_names("mmalign.retrieval.searchers:SEARCHERS"),
                               default="scann", required=False),
    "retrieval.k": Rule("int", low=1),
    "retrieval.num_leaves": Rule("int", low=1, optional=True, required=False),
    "retrieval.num_leaves_to_search": Rule("int", low=1, optional=True, required=False),
    "retrieval.reorder": Rule("int", low=0, default=100, required=False),
    "retrieval.example_query": Rule("str"),
    "train.learning_rate_multipliers": Rule("scales", low=0.0, default=(), required=False),
    # Peak FLOP/s of one device, for the utilisation (MFU) in the training log; None: the
    # known accelerators' table, or on CPU the host's measured matmul rate.
    "train.peak_flops": Rule("float", low=1.0, optional=True, default=None, required=False),
    # (first, last) steps to trace with the JAX profiler into <workdir>/tensorboard.
    "train.profile_steps": Rule("ints", low=1, optional=True, default=None, required=False),
    "init.checkpoint": Rule("str", optional=True, required=False),
    "init.format": Rule("choice", choices=_names("mmalign.checkpoints.importers:IMPORTERS"),
                        optional=True, required=False),
    "init.tokenizer": Rule("str", optional=True, required=False),
}


def value(config, key: str, *, section: str | None = None):
  """config's value at dotted `key` (relative to `section`, e.g. "loss"), else its default."""
  found, current = _lookup(config, key)
  if found:
    return current
  full = f"{section}.{key}" if section else key
  if full not in RULES:
    raise KeyError(f"{full} is neither in the config nor in settings.RULES")
  return RULES[full].default


def _lookup(config, key: str) -> tuple[bool, Any]:
  current = config
  for part in key.split("."):
    try:
      if part not in current:
        return False, None
      current = current[part]
    except TypeError:  # A scalar where a section was expected.
      return False, None
  return True, current


def _describe(rule: Rule) -> str:
  if rule.kind == "choice":
    choices = rule.choices() if callable(rule.choices) else rule.choices
    return f"one of {', '.join(map(repr, choices))}" + (" or None" if rule.optional else "")
  bounds = []
  if rule.low is not None:
    bounds.append(f">= {_number(rule.low)}")
  if rule.high is not None:
    bounds.append(f"{'<=' if rule.high_included else '<'} {_number(rule.high)}")
  what = {"int": "an integer", "float": "a finite number", "bool": "True or False",
          "str": "a non-empty string", "ints": "a non-empty tuple of integers",
          "scales": "a tuple of (regex, number) pairs, each number",
          "templates": "a non-empty tuple of strings, each with a '{}' for the class name",
          "floats": "a non-empty tuple of numbers, each",
          "strmap": "a mapping of names to non-empty strings or None"}[rule.kind]
  return " ".join([what, " and ".join(bounds)]).strip() + (" or None" if rule.optional else "")


def _number(x: float) -> str:
  return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _valid(rule: Rule, x) -> bool:
  if x is None:
    return rule.optional
  if rule.kind == "choice":
    return x in (rule.choices() if callable(rule.choices) else rule.choices)
  if rule.kind == "bool":
    return isinstance(x, bool)
  if rule.kind == "str":
    return isinstance(x, str) and bool(x.strip())
  if rule.kind in ("ints", "floats"):
    return (isinstance(x, (tuple, list)) and bool(x)
            and all(_in_range(rule, i, integer=rule.kind == "ints") for i in x))
  if rule.kind == "templates":
    return (isinstance(x, (tuple, list)) and bool(x)
            and all(isinstance(t, str) and "{}" in t for t in x))
  if rule.kind == "strmap":
    return hasattr(x, "items") and all(
        isinstance(k, str) and (v is None or isinstance(v, str) and v.strip())
        for k, v in x.items())
  if rule.kind == "scales":
    return isinstance(x, (tuple, list)) and all(
        isinstance(pair, (tuple, list)) and len(pair) == 2 and _is_regex(pair[0])
        and _in_range(rule, pair[1], integer=False) for pair in x)
  return _in_range(rule, x, integer=rule.kind == "int")


def _is_regex(x) -> bool:
  if not isinstance(x, str) or not x:
    return False
  try:
    re.compile(x)
  except re.error:
    return False
  return True


def _in_range(rule: Rule, x, *, integer: bool) -> bool:
  if (isinstance(x, bool) or not isinstance(x, int if integer else (int, float))
      or not math.isfinite(x)):
    return False
  return ((rule.low is None or x >= rule.low)
          and (rule.high is None or x < rule.high or (rule.high_included and x == rule.high)))


def check(config) -> None:
  """Raises UsageError naming the first bad key; needs nothing but the config."""
  for key, rule in RULES.items():
    found, x = _lookup(config, key)
    if not found:
      if rule.required:
        raise UsageError(f"config key {key} is missing; it must be {_describe(rule)}")
      continue
    if not _valid(rule, x):
      shown = x.to_dict() if hasattr(x, "to_dict") else x  # A ConfigDict prints in lines.
      raise UsageError(f"{key}={shown!r} is not allowed; it must be {_describe(rule)}")
  steps, warmup = config.train.steps, config.train.warmup_steps
  if warmup >= steps:
    raise UsageError(f"train.warmup_steps={warmup} must be < train.steps={steps}")
  micro_batches = value(config, "train.micro_batches")
  if config.train.batch_size % micro_batches:
    raise UsageError(f"train.batch_size={config.train.batch_size} must divide by "
                     f"train.micro_batches={micro_batches}")
  leaves, searched = (value(config, "retrieval.num_leaves"),
                      value(config, "retrieval.num_leaves_to_search"))
  if leaves is not None and searched is not None and searched > leaves:
    raise UsageError(f"retrieval.num_leaves_to_search={searched} must be <= "
                     f"retrieval.num_leaves={leaves}")
  impl = value(config, "loss.kernel.impl")
  if impl != "auto" and value(config, "loss.distributed"):
    raise UsageError(f"loss.kernel.impl={impl!r} with loss.distributed: the sharded losses "
                     "compute their blocks with plain XLA ops and take no loss.kernel "
                     "settings; leave loss.kernel.impl='auto' or unset loss.distributed")
  if impl != "auto" and config.loss.name == "regression":
    raise UsageError(f"loss.kernel.impl={impl!r} with loss.name='regression': that loss "
                     "compares matched pairs only and has no kernel; leave it 'auto'")
  _check_evals(config)
  profiled = value(config, "train.profile_steps")
  if profiled is not None and (len(profiled) != 2 or not profiled[0] <= profiled[1] <= steps):
    raise UsageError(f"train.profile_steps={tuple(profiled)} must be (first, last) with "
                     f"first <= last <= train.steps={steps}")
  if value(config, "loss.task_weight") > 0 and not value(config, "task.label"):
    raise UsageError("loss.task_weight > 0 needs task.label (the dataset label to classify)")
  if value(config, "init.checkpoint") or value(config, "init.tokenizer"):
    from mmalign.checkpoints import importers  # pylint: disable=import-outside-toplevel
    importers.check(config.init)


# Keys of a `config.evals` entry beside "type", "split" and "every_steps", by type.
EVAL_OPTIONS = {"retrieval": {"ks": Rule("ints", low=1), "batch_size": Rule("int", low=1)},
                "classification": {"batch_size": Rule("int", low=1)},
                "zero_shot": {"label": Rule("str"), "templates": Rule("templates"),
                              "templates_file": Rule("str"), "class_names_file": Rule("str"),
                              "batch_size": Rule("int", low=1)},
                "linear_probe": {"label": Rule("str"), "weight_decays": Rule("floats", low=0.0),
                                 "train_split": Rule("str"), "validation_split": Rule("str"),
                                 "steps": Rule("int", low=1), "batch_size": Rule("int", low=1),
                                 "inputs": Rule("choice", choices=("image", "text", "fused"))}}


def _evals(config) -> list:
  """The (name, block) pairs of `config.evals`, none when it is absent or None."""
  found, evals = _lookup(config, "evals")
  return list(evals.items()) if found and evals is not None else []


def _check_evals(config) -> None:
  """`config.evals`: {name: {type, split, every_steps, options}}, each value checked."""
  evals = _evals(config)
  types = sorted(_names("mmalign.eval.evaluators:EVALUATORS")()) if evals else []
  for name, block in evals:
    where = f"evals.{name}"
    if not hasattr(block, "keys"):
      raise UsageError(f"{where} must be a dict with a 'type'; got {block!r}")
    kind = block.get("type")
    if kind not in types:
      raise UsageError(f"{where}.type={kind!r} is not allowed; it must be one of "
                       f"{', '.join(map(repr, types))}")
    rules = {"type": None, "split": Rule("str"),
             "every_steps": Rule("int", low=1, optional=True), **EVAL_OPTIONS.get(kind, {})}
    for key, x in block.items():
      if key not in rules:
        raise UsageError(f"{where}.{key} is not an option of a {kind!r} evaluator; allowed: "
                         f"{', '.join(rules)}")
      rule = rules[key]
      if rule is not None and not _valid(rule, x):
        raise UsageError(f"{where}.{key}={x!r} is not allowed; it must be {_describe(rule)}")
    if kind == "classification" and not value(config, "task.label"):
      raise UsageError(f"{where}: a 'classification' evaluator needs task.label")
    if kind in ("zero_shot", "linear_probe") and "label" not in block:
      raise UsageError(f"{where}: a {kind!r} evaluator needs a label (a class-label "
                       "feature of the dataset)")


def check_with_dataset(config):
  """`check_dataset` on the config's dataset, built first if missing; returns the builder."""
  from mmalign.data import sources  # pylint: disable=import-outside-toplevel
  features, splits = ({k: v for k, v in value(config, key).items() if v is not None}
                      for key in ("data.features", "data.splits"))
  builder = sources.get_builder(config.data.name, config.data.config, config.data.data_dir,
                                features=features, splits=splits)
  sources.ensure_built(builder)
  check_dataset(config, builder)
  return builder


def _check_prompt_files(where: str, block, num_classes: int) -> None:
  """A zero-shot evaluator's class-name file names every class; its templates hold '{}'."""
  from mmalign.utils import read_lines  # pylint: disable=import-outside-toplevel
  if "templates" in block and "templates_file" in block:
    raise UsageError(f"{where}: give templates or templates_file, not both")
  if "templates_file" in block:
    templates = read_lines(block["templates_file"], f"{where}.templates_file")
    if not _valid(Rule("templates"), templates):
      bad = next(t for t in templates if "{}" not in t)
      raise UsageError(f"{where}.templates_file: template {bad!r} has no '{{}}' for the "
                       "class name")
  if "class_names_file" in block:
    names = read_lines(block["class_names_file"], f"{where}.class_names_file")
    if len(names) != num_classes:
      raise UsageError(f"{where}.class_names_file={block['class_names_file']!r} holds "
                       f"{len(names)} names for the {num_classes} classes of "
                       f"{block['label']!r} (one per line, in label order)")


def check_dataset(config, builder) -> None:
  """The checks that need the built dataset: the splits and the task label exist, and
  images of varying size have a size to become."""
  splits = list(builder.info.splits)
  height, width, _ = builder.info.features["image"].shape
  if (height is None or width is None) and not value(config, "data.image_size"):
    raise UsageError(f"dataset {config.data.name}'s images vary in size: set data.image_size "
                     "(e.g. 224) to resize and crop them to one")
  declared = [(f"evals.{name}.{role}", block[role]) for name, block in _evals(config)
              for role in ("split", "train_split", "validation_split") if role in block]
  for key, split in (("eval.split", config.eval.split), ("the training split", "train"),
                     *declared):
    if split not in splits:
      raise UsageError(f"{key}={split!r}: dataset {builder.name}/{builder.builder_config.name} "
                       f"has no such split; available: {', '.join(splits)}")
  from mmalign.data import sources  # pylint: disable=import-outside-toplevel
  for name, block in _evals(config):
    if block.get("type") in ("zero_shot", "linear_probe"):
      classes = sources.class_names(builder, block["label"], config_key=f"evals.{name}.label")
      _check_prompt_files(f"evals.{name}", block, len(classes))
