"""README.md: the two opening commands, and every repository path it names exists."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_LEVEL = ("mmalign/", "experiments/", "kernels/", "tests/", "docs/", "benchmarks/",
             ".ci/", "launch.py", "setup.cfg", "pyproject.toml", "constraints.txt")
# Both opening commands install the versions CI tests, not whatever the ranges admit today.
PINNED_INSTALL = "pip install -c constraints.txt -e "


def _readme() -> str:
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    return f.read()


def test_readme_opens_with_install_and_test_commands():
  first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", _readme(), re.S).group(1)
  commands = [line for line in first_block.splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
  assert len(commands) == 2, commands
  assert commands[0].startswith("python3.11 -m venv .venv && . .venv/bin/activate && ")
  assert commands[1].startswith("python3.11 -m venv .venv && . .venv/bin/activate && ")
  assert f"{PINNED_INSTALL}. " in commands[0] and "python launch.py" in commands[0]
  assert f"{PINNED_INSTALL}'.[test]' " in commands[1] and "python -m pytest" in commands[1]


def test_ci_installs_and_runs_like_the_readme_test_command():
  test_command = re.search(r"python -m pytest[^\n`]*", _readme()).group(0).strip()
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  assert "-c constraints.txt -e '.[test]'" in ci
  assert re.search(rf"^{re.escape(test_command)}$", ci, re.M), test_command


def test_every_path_in_readme_exists():
  candidates = set(re.findall(r"[\w./-]+", _readme()))
  paths = {c.rstrip(".,:)") for c in candidates if c.startswith(TOP_LEVEL)}
  missing = sorted(p for p in paths if not os.path.exists(os.path.join(ROOT, p)))
  assert paths and not missing, missing
