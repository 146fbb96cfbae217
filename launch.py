"""mmalign launcher: train, evaluate and search, from one config file.

  python launch.py --config=experiments/configs/quickstart.py --workdir=/tmp/mm
  python launch.py --config=experiments/configs/quickstart.py --workdir=/tmp/mm \
      --mode=search --query="latin capital letter a with ring above"

--mode=all (the default) trains (resuming if the workdir has a checkpoint),
evaluates on the held-out split and runs the config's example ScaNN search.
Any config value can be overridden: --config.train.steps=100.
"""

from __future__ import annotations

import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mmalign.errors import UsageError

MODES = ("all", "train", "eval", "search", "index", "export")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, tokenizer, "
                               "metrics and results; reused to resume.")
_MODE = flags.DEFINE_enum("mode", "all", MODES, "What to run.")
_QUERY = flags.DEFINE_string("query", None, "Text to search for (--mode=search).")
_QUERY_IMAGE = flags.DEFINE_string("query_image", None, "PNG to search the split's captions "
                                   "with (image→text, --mode=search).")
_K = flags.DEFINE_integer("k", None, "Number of results (default: config.retrieval.k).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Where --mode=export writes the model "
                                  "(weights, config, a published tokenizer).")
_EXPORT_LAYOUT = flags.DEFINE_enum("export_layout", "hf_clip", ["hf_clip", "open_clip"],
                                   "--mode=export's layout: Hugging Face (CLIP or SigLIP) or "
                                   "open_clip (CLIP).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process job started by "
    "hand (SLURM, Open MPI and Cloud TPU pods are detected without flags).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str, query: str | None, k: int | None,
        query_image: str | None = None, export_dir: str | None = None,
        export_layout: str = "hf_clip") -> None:
  """Checks flags and config, builds the run context once, then runs `mode` under the
  workdir's lock."""
  check_arguments(mode, query, k, query_image, export_dir)
  # Imported here so that --help and flag errors answer without loading JAX.
  from mmalign import run as run_lib  # pylint: disable=import-outside-toplevel
  run_lib.execute(config, workdir, mode, query=query, k=k, query_image=query_image,
                  export_to=(export_dir, export_layout) if mode == "export" else None)


def check_arguments(mode: str, query: str | None, k: int | None,
                    query_image: str | None, export_dir: str | None = None) -> None:
  """The launcher's own flags, checked before the config and before any work."""
  if mode == "export" and not export_dir:
    raise UsageError("--mode=export needs --export_dir, the folder to write the model to")
  if k is not None and k < 1:
    raise UsageError(f"--k={k} must be >= 1")
  if query is not None:
    try:
      query.encode("utf-8")
    except UnicodeEncodeError:
      raise UsageError("--query is not valid UTF-8 text; pass the query in UTF-8") from None
  if mode == "search" and not query_image and (query is None or not query.strip()):
    raise UsageError("--mode=search needs a non-empty --query, e.g. "
                     "--query='latin small letter a with grave', or --query_image=x.png")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but every flag error (a bad value, an unknown config key, a missing
  --config) is one line and exit status 2 instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e).replace("\n", "; ")
    _fail(f"{message} (see --help)")
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    culprits = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
    _fail(f"{', '.join(culprits) or key}: no such config key ({key!r}); see the "
          "config file for the keys it defines")
  except Exception as e:  # pylint: disable=broad-except  # A config file that fails to load.
    _fail(f"--config: {type(e).__name__}: {e}")


def _fail(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    # Progress is printed; libraries' INFO logs (orbax, TFDS) only with --verbosity=0.
    logging.set_verbosity(logging.WARNING)
  from mmalign.train import checkpoint, distributed, preemption, trainer  # pylint: disable=import-outside-toplevel
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    run(_CONFIG.value, _WORKDIR.value, _MODE.value, _QUERY.value, _K.value, _QUERY_IMAGE.value,
        _EXPORT_DIR.value, _EXPORT_LAYOUT.value)
  except UsageError as e:
    _fail(str(e))
  except preemption.Preempted as e:  # A scheduler's SIGTERM: saved, resumable, not a failure.
    print(str(e), file=sys.stderr)
    sys.exit(0)
  except (trainer.NonFiniteLossError, trainer.RunEndedError) as e:
    _fail(str(e), status=1)
  except checkpoint.CheckpointWriteError as e:
    # orbax's writer threads may still print their own copies of the error while the
    # interpreter shuts down; the state on disk is settled, so leave without that.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)  # pylint: disable=protected-access


class _DropNoise(logging_std.Filter):
  """TFDS warns on every run that OpenCV is absent (PIL decodes these images fine); a
  failed checkpoint write is logged by every orbax writer thread and task, while the
  launcher reports it once (checkpoint.CheckpointWriteError)."""

  NOISE = ("OpenCV is not installed", "No space left on device", "RESOURCE_EXHAUSTED",
           "Task exception was never retrieved")

  def filter(self, record: logging_std.LogRecord) -> bool:
    message = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      message += str(record.exc_info[1])
    return not any(noise in message for noise in self.NOISE)


def _drop_closed_loop_callbacks(unraisablehook):
  """After a failed async checkpoint write, tensorstore's I/O threads still complete their
  futures into orbax's event loop, which has closed; each reports it as unraisable. Those
  tracebacks say nothing the launcher's one line does not."""

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      unraisablehook(unraisable)

  return hook


if __name__ == "__main__":
  for name in ("absl", "asyncio"):
    logging_std.getLogger(name).addFilter(_DropNoise())
  sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
  app.run(main, flags_parser=parse_flags)
