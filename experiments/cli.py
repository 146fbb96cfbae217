"""What every experiment script's `main` does around its own work, as `launch.py` does.

Library INFO logs stay quiet unless --verbosity is given, stray arguments are refused, the
exact command is recorded (results files quote it), and a UsageError prints as one `error:`
line with exit status 2.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable

from mmalign.errors import UsageError


def run_script(module: str, argv: list[str], body: Callable[[str], object]) -> None:
  """Calls body(command), where command is `python -m <module> <the flags given>`."""
  from absl import flags, logging  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  command = " ".join([f"python -m {module}"] + [shlex.quote(a) for a in sys.argv[1:]])
  try:
    if len(argv) > 1:
      raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    body(command)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(module: str, define_flags: Callable[[], None],
         body: Callable[[object, str], object]) -> None:
  """A script's `__main__`: defines its flags, then runs body(FLAGS, command) by run_script.

  The flags are defined only here, so importing a script (tests) adds no global absl flags.
  """
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  define_flags()
  app.run(lambda argv: run_script(module, argv, lambda command: body(flags.FLAGS, command)))


def write_results(out_dir: str, report: dict, markdown: str,
                  plot: Callable[[dict, str], None], png_name: str) -> None:
  """results.json, results.md and the PNG of a results folder, each replaced whole."""
  import os  # pylint: disable=import-outside-toplevel
  from mmalign import utils  # pylint: disable=import-outside-toplevel
  utils.write_json(os.path.join(out_dir, "results.json"), report)
  utils.write_atomic(os.path.join(out_dir, "results.md"), markdown)
  plot(report, os.path.join(out_dir, png_name))
