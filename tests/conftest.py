"""Shared fixtures: one tiny unicode_glyphs build per test session."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `experiments.configs` and `launch`.
  sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  from mmalign.data import sources  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  sources.ensure_built(sources.get_builder("unicode_glyphs", "tiny", data_dir))
  return data_dir
