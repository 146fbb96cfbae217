"""Shared by the pretrained-weight tests: the RGB dataset."""

import pytest

from mmalign.data import sources


@pytest.fixture(scope="module")
def rgb_data_dir(tmp_path_factory):
  """shapes/tiny (64 px RGB), built once per module."""
  data_dir = str(tmp_path_factory.mktemp("tfds_rgb"))
  sources.ensure_built(sources.get_builder("shapes", "tiny", data_dir))
  return data_dir
