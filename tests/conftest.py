"""Shared fixtures (one tiny unicode_glyphs build per test session), the `single_device`
marker (such a test is skipped where JAX sees several devices, e.g. in CI's second run
under XLA_FLAGS=--xla_force_host_platform_device_count=8) and the `slow` marker applied
from measured durations (tests/durations.txt, made by tests/durations.py)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATIONS = os.path.join(ROOT, "tests", "durations.txt")
SLOW_SECONDS = 0.5  # A test measured at this or more (setup + call + teardown) is `slow`.
if ROOT not in sys.path:  # For `experiments.configs` and `launch`.
  sys.path.insert(0, ROOT)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "single_device: its fixtures or its point hold on one device only; "
      "skipped where jax.device_count() > 1")


def _measured_slow() -> set[str]:
  if not os.path.exists(DURATIONS):
    return set()
  with open(DURATIONS, encoding="utf-8") as f:
    rows = [line.split(maxsplit=1) for line in f if line.strip()]
  return {test.strip() for seconds, test in rows if float(seconds) >= SLOW_SECONDS}


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  slow = _measured_slow()
  for item in items:
    if item.nodeid in slow:
      item.add_marker(pytest.mark.slow)
  marked = [item for item in items if item.get_closest_marker("single_device")]
  if not marked:
    return
  # Imported here, after XLA_FLAGS (from the environment) fixes the device count.
  import jax  # pylint: disable=import-outside-toplevel
  devices = jax.device_count()
  if devices > 1:
    skip = pytest.mark.skip(reason=f"single_device: needs one device, JAX sees {devices}")
    for item in marked:
      item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  from mmalign.data import sources  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  sources.ensure_built(sources.get_builder("unicode_glyphs", "tiny", data_dir))
  return data_dir
