"""setup.cfg states compatible ranges; constraints.txt pins, inside them, what CI installs."""

import ast
import configparser
import os
import re

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path: str) -> str:
  with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
    return f.read()


def _setup_cfg() -> configparser.ConfigParser:
  config = configparser.ConfigParser(interpolation=None)
  config.read_string(_read("setup.cfg"))
  return config


def _lines(value: str) -> list[str]:
  return [line.strip() for line in value.splitlines()
          if line.strip() and not line.strip().startswith("#")]


def _declared() -> list[Requirement]:
  """install_requires and every extra."""
  config = _setup_cfg()
  lines = _lines(config["options"]["install_requires"])
  for extra in config["options.extras_require"].values():
    lines += _lines(extra)
  return [Requirement(line) for line in lines]


def _pins() -> dict[str, Requirement]:
  pins = {}
  for line in _lines(_read("constraints.txt")):
    req = Requirement(line)
    name = canonicalize_name(req.name)
    assert name not in pins, f"{req.name} pinned twice"
    pins[name] = req
  return pins


@pytest.mark.parametrize("python", ["3.11", "3.11.7", "3.12", "3.12.1", "3.13"])
def test_python_requires_admits_the_pythons_jax_supports(python):
  assert SpecifierSet(_setup_cfg()["options"]["python_requires"]).contains(python)


def test_every_declared_requirement_is_a_bounded_range():
  for req in _declared():
    operators = {spec.operator for spec in req.specifier}
    assert operators == {">=", "<"}, f"{req}: want '>=tested,<next breaking release'"


def test_every_constraint_is_an_exact_pin():
  for req in _pins().values():
    (spec,) = req.specifier
    assert spec.operator == "==" and "*" not in spec.version, str(req)
    assert not req.extras and req.marker is None and req.url is None, str(req)


def test_every_declared_requirement_is_pinned_inside_its_range():
  pins = _pins()
  for req in _declared():
    pin = pins.get(canonicalize_name(req.name))
    assert pin is not None, f"{req.name} has no pin in constraints.txt"
    (version,) = [spec.version for spec in pin.specifier]
    assert req.specifier.contains(version), f"constraints.txt {pin} lies outside setup.cfg {req}"


def test_ci_installs_the_project_only_with_the_pins():
  installs = [line for line in _read(".ci", "run").splitlines() if "pip install" in line
              and "--upgrade pip" not in line]
  assert installs and all("-c constraints.txt -e " in line for line in installs), installs


def test_ci_python312_run_selects_some_test():
  """pytest exits 5 when -m deselects every test, and .ci/run would fail on that; `slow`
  comes from measured durations (tests/conftest.py), so the 3.12 run selects by file only."""
  path = re.search(r'python -m pytest -q (\S+)$', _read(".ci", "run"), re.M).group(1)
  module = ast.parse(_read(path))
  assert [node.name for node in module.body
          if isinstance(node, ast.FunctionDef) and node.name.startswith("test")], path
