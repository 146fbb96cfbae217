"""The run context: dataset, tokenizer, model and mesh of one run, built once.

`prepare` builds it; the launcher and the tables pass it down to training, the
evaluators and search, so none of them rebuilds anything. The first training run
trains the tokenizer on the training captions; every later run loads that copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmalign import mesh as mesh_lib
from mmalign import settings
from mmalign import workdir as workdir_lib
from mmalign.checkpoints import importers
from mmalign.data import pipeline, pretrained_tokenizer, sources
from mmalign.data.pretrained_tokenizer import PretrainedTokenizer
from mmalign.data.tokenizer import TextSettings, Tokenizer
from mmalign.errors import UsageError
from mmalign.models.build import build_dual_encoder, resolved_model_config
from mmalign.models.dual_encoder import DualEncoder

TOKENIZER_DIR = "tokenizer"


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  workdir: str
  builder: object
  tokenizer: Tokenizer | PretrainedTokenizer
  model: DualEncoder
  normalization: pipeline.ImageNormalization
  class_names: tuple[str, ...] = ()  # Of `task.label`; empty without a task.
  tokenizer_unsaved: bool = False  # Trained by this run, not yet in the workdir.
  _jitted: dict = dataclasses.field(default_factory=dict, repr=False)

  def save_tokenizer(self) -> None:
    """Writes a newly trained tokenizer into the workdir (process 0; the others wait)."""
    if not self.tokenizer_unsaved:
      return
    if jax.process_index() == 0:
      self.tokenizer.save(os.path.join(self.workdir, TOKENIZER_DIR))
    _barrier("tokenizer saved")
    self.tokenizer_unsaved = False

  def jitted_method(self, method: str):
    """jit of `model.<method>(variables, x)` in eval mode, compiled once per experiment; x:
    the method's input(s), batch first, in `batch_multiple` equal shards over this process's
    devices (use `apply_in_batches`); output replicated."""
    if method not in self._jitted:
      mesh = self.eval_mesh()
      self._jitted[method] = jax.jit(
          lambda variables, x: self.model.apply(variables, *(x if isinstance(x, tuple) else (x,)),
                                                method=getattr(DualEncoder, method)),
          in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
          out_shardings=mesh_lib.replicated(mesh))
    return self._jitted[method]

  def eval_mesh(self):
    """The training mesh over this process's devices (all of them in a one-process run)."""
    return mesh_lib.make_mesh(self.config.train.get("mesh"),
                              devices=jax.local_devices() if jax.process_count() > 1 else None)

  @property
  def batch_multiple(self) -> int:
    """Eval batches are padded to a multiple of this (the number of batch shards)."""
    return mesh_lib.batch_devices(self.eval_mesh())

  @property
  def stored_image_shape(self) -> tuple[int, int, int]:
    """The dataset's images: [h, w, c] uint8."""
    return tuple(self.builder.info.features["image"].shape)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """The model's input images, after `normalization` (data.image_size, channels)."""
    return self.normalization.output_shape(self.stored_image_shape)

  def init_variables(self, seed: int) -> dict:
    """{"params": ..., and any state collection such as "batch_stats"}."""
    tokens = jnp.zeros((1, self.tokenizer.settings.max_length), jnp.int32)
    images = jnp.zeros((1, *self.image_shape), jnp.float32)
    return dict(self.model.init(jax.random.key(seed), tokens, images))

  def meta(self) -> dict:
    """What a checkpoint must agree on to be restored into this experiment."""
    # Through JSON, so tuples compare equal to the lists a saved checkpoint holds.
    return {"model_config": json.loads(json.dumps(resolved_model_config(
        self.config.model, self.model.num_classes))),
            "tokenizer_sha256": self.tokenizer_sha256(),
            "tokenizer_settings": dataclasses.asdict(self.tokenizer.settings),
            "dataset": f"{self.config.data.name}/{self.config.data.config}",
            "dataset_version": str(self.builder.version)}

  def tokenizer_sha256(self) -> str:
    return hashlib.sha256(self.tokenizer.model_proto).hexdigest()


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            allow_new_tokenizer: bool) -> Experiment:
  """Checks the config and builds the run context (dataset if missing, tokenizer, model).

  Raises UsageError for a bad config, or a workdir without a tokenizer unless
  `allow_new_tokenizer`. A new tokenizer stays in memory until `save_tokenizer`
  (called by the trainer once all else is built), so a failed run writes nothing.
  """
  settings.check(config)
  workdir_lib.check_writable(workdir)
  builder = settings.check_with_dataset(config)
  tokenizer, unsaved = _tokenizer(config, workdir, builder, allow_new_tokenizer)
  label = task_label(config)
  class_names = tuple(sources.class_names(builder, label)) if label else ()
  model = build_dual_encoder(config.model, tokenizer.vocab_size, tokenizer.settings.max_length,
                             num_classes=len(class_names))
  normalization = pipeline.ImageNormalization(
      tuple(config.data.image_mean), tuple(config.data.image_std),
      settings.value(config, "data.image_size"))
  return Experiment(config, workdir, builder, tokenizer, model, normalization, class_names,
                    tokenizer_unsaved=unsaved)


def for_training(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """`prepare` for a run that trains: its first run trains the tokenizer."""
  return prepare(config, workdir, allow_new_tokenizer=True)


def _tokenizer(config, workdir: str, builder, allow_new: bool):
  """(the run's tokenizer, whether it is new): the workdir's, else the checkpoint's
  (`init.tokenizer`), else one trained on the training captions; names unknown text keys."""
  tokenizer_dir = os.path.join(workdir, TOKENIZER_DIR)
  _barrier("before looking for the tokenizer")  # All processes then take the same branch.
  fields = [f.name for f in dataclasses.fields(TextSettings)]
  unknown = sorted(set(config.text.keys()) - set(fields))
  if unknown:
    raise UsageError(f"unknown config key(s) text.{', text.'.join(unknown)}; allowed: "
                     f"{', '.join(sorted(fields))}")
  wanted = TextSettings(**config.text)
  published = importers.tokenizer_path(config.init) if config.get("init") else None
  if PretrainedTokenizer.exists(tokenizer_dir) or Tokenizer.exists(tokenizer_dir):
    if PretrainedTokenizer.exists(tokenizer_dir) != bool(published):
      saved = "a checkpoint's tokenizer" if published is None else "a trained tokenizer"
      raise UsageError(f"--workdir {workdir!r} holds {saved} ({tokenizer_dir}), but "
                       f"init.tokenizer is {'unset' if published is None else 'set'}; "
                       "use a new --workdir")
    tokenizer = (PretrainedTokenizer if published else Tokenizer).load(tokenizer_dir)
    for field in ("max_length",) if published else fields:
      old, new = getattr(tokenizer.settings, field), getattr(wanted, field)
      if old != new:
        raise UsageError(f"text.{field}={new!r} differs from the tokenizer in {tokenizer_dir} "
                         f"(made with text.{field}={old!r}); set it back or use a new "
                         "--workdir")
    return tokenizer, False
  if not allow_new:
    raise UsageError(f"--workdir {workdir!r} holds no trained model (no "
                     f"{TOKENIZER_DIR}/): run --mode=train first")
  if published:
    return pretrained_tokenizer.from_path(published, wanted.max_length), True
  # Deterministic (sorted captions, one thread), so every process trains the same one.
  index = pipeline.index_split(sources.open_split(builder, "train", decode_images=False))
  return Tokenizer.train(index.tokenizer_corpus, wanted), True


def task_label(config) -> str | None:
  """The dataset label the multi-task classifier learns (`task.label`), or None."""
  return settings.value(config, "task.label")


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def apply_in_batches(experiment: Experiment, method: str, variables, inputs, batch_size: int,
                     prepare=None) -> np.ndarray:
  """`model.<method>` over inputs (an array or a tuple of arrays, batch first, >= 1 row)
  on every local device, compiled once: each batch is zero-padded to `batch_rows(...)`
  rows, as the mesh splits only into equal shards, and the padding's outputs dropped.
  prepare: one batch of `inputs` -> the method's inputs (e.g. indices -> `split_images`),
  so that a split is decoded one batch at a time."""
  return _batched(experiment.jitted_method(method), variables, inputs, batch_size,
                  experiment.batch_multiple, prepare)


def embed_texts(experiment: Experiment, variables, texts: list[str], batch_size: int = 1024):
  """[len(texts), embed_dim] float32 numpy."""
  return apply_in_batches(experiment, "embed_text", variables,
                          experiment.tokenizer.encode(texts), batch_size)


def embed_images(experiment: Experiment, variables, source, batch_size: int = 512,
                 indices: np.ndarray | None = None):
  """Embeds a split's examples at `indices` (default: all, in order): [n, embed_dim]."""
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  if not len(indices):
    return np.zeros((0, experiment.model.embed_dim), np.float32)
  return apply_in_batches(experiment, "embed_image", variables, indices, batch_size,
                          prepare=lambda batch: split_images(experiment, source, batch))


def embed_image_array(experiment: Experiment, variables, images: np.ndarray,
                      batch_size: int = 512) -> np.ndarray:
  """Normalised images [n, h, w, c] float32 → [n, embed_dim] float32 numpy."""
  return apply_in_batches(experiment, "embed_image", variables, images, batch_size)


def split_images(experiment: Experiment, source, indices: np.ndarray) -> np.ndarray:
  """The split's images at indices, decoded and normalised: [len(indices), h, w, c] float32."""
  return experiment.normalization(pipeline.decode_images(source, indices,
                                                         experiment.normalization.size))


def batch_rows(total: int, batch_size: int, multiple: int) -> int:
  """Rows of every batch `_batched` runs for `total` rows: batch_size, or total where that
  is less, rounded up to a multiple of `multiple` (the mesh's batch shards)."""
  return -(-min(batch_size, total) // multiple) * multiple


def _batched(fn, variables, inputs, batch_size: int, multiple: int = 1,
             prepare=None) -> np.ndarray:
  """`apply_in_batches` for any `fn(variables, batch)`; raises ValueError for empty inputs
  or arrays of unequal length."""
  arrays = inputs if isinstance(inputs, tuple) else (inputs,)
  total = len(arrays[0])
  if any(len(a) != total for a in arrays):
    raise ValueError(f"inputs differ in length: {[len(a) for a in arrays]}")
  if not total:
    raise ValueError("no rows to run: inputs are empty")
  rows = batch_rows(total, batch_size, multiple)
  outputs = []
  for start in range(0, total, rows):
    batch = jax.tree.map(lambda a: a[start:start + rows], inputs)
    batch = batch if prepare is None else prepare(batch)
    count = min(rows, total - start)
    padded = jax.tree.map(
        lambda c: np.concatenate([c, np.zeros((rows - count, *c.shape[1:]), c.dtype)]), batch)
    outputs.append(np.asarray(fn(variables, padded))[:count])
  return np.concatenate(outputs)
