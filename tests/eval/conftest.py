"""Shared by the evaluator tests: the built-in shapes dataset (64 px RGB, class labels)."""

import pytest

from mmalign.data import sources


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
  """shapes/tiny, built once per session."""
  data_dir = str(tmp_path_factory.mktemp("tfds_shapes"))
  sources.ensure_built(sources.get_builder("shapes", "tiny", data_dir))
  return data_dir
