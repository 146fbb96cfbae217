"""mmalign.utils: atomic writes leave the old file or the new one, never a mix; timing
returns one figure per timed call and the last output."""

import json
import os

import pytest

from mmalign import utils


def test_write_json_replaces_the_file_whole(tmp_path):
  path = str(tmp_path / "sub" / "result.json")
  utils.write_json(path, {"a": 1})
  utils.write_json(path, {"b": [1, 2]})
  with open(path) as f:
    assert json.load(f) == {"b": [1, 2]}
  assert os.listdir(tmp_path / "sub") == ["result.json"]  # No temporary file left.


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
  path = str(tmp_path / "result.json")
  utils.write_json(path, {"kept": True})

  def failing_fsync(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", failing_fsync)
  with pytest.raises(OSError):
    utils.write_json(path, {"lost": True})
  with open(path) as f:
    assert json.load(f) == {"kept": True}
  assert os.listdir(tmp_path) == ["result.json"]


def test_time_calls_counts_warmup_apart_and_returns_the_last_output():
  calls = []
  out, times = utils.time_calls(lambda: calls.append(len(calls)) or len(calls), repeats=3,
                                warmup=2)
  assert len(calls) == 5 and out == 5 and len(times) == 3 and all(t >= 0 for t in times)
