"""README.md: the two opening commands, and every repository path it names exists."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_LEVEL = ("mmalign/", "experiments/", "kernels/", "tests/", "docs/", "benchmarks/",
             ".ci/", "launch.py", "setup.cfg", "pyproject.toml")


def _readme() -> str:
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    return f.read()


def test_readme_opens_with_install_and_test_commands():
  first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", _readme(), re.S).group(1)
  commands = [line for line in first_block.splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
  assert len(commands) == 2, commands
  assert "pip install" in commands[0] and "launch.py" in commands[0]
  assert "pip install" in commands[1] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
  test_command = re.search(r"python -m pytest[^\n`]*", _readme()).group(0).strip()
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    assert test_command in f.read()


def test_every_path_in_readme_exists():
  candidates = set(re.findall(r"[\w./-]+", _readme()))
  paths = {c.rstrip(".,:)") for c in candidates if c.startswith(TOP_LEVEL)}
  missing = sorted(p for p in paths if not os.path.exists(os.path.join(ROOT, p)))
  assert paths and not missing, missing
