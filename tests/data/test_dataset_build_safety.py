"""Dataset builds and cached datasets fail safe: concurrent builds of one dataset both
succeed (one builds, the other waits and reuses it), an unwritable data_dir and a
corrupt cached dataset are refused with one-line UsageErrors that say what to do.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

from mmalign.data import sources
from mmalign.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Each child imports first, says it is ready, then waits for "go": the two builds start
# together instead of one finishing before the other has imported TFDS.
_BUILD_CHILD = """
import os, sys, time
data_dir, ready, go = sys.argv[1:]
from mmalign.data import sources
builder = sources.get_builder("unicode_glyphs", "tiny", data_dir)
open(ready, "w").close()
while not os.path.exists(go):
  time.sleep(0.01)
sources.ensure_built(builder)
print("records:", len(sources.open_split(builder, "test", decode_images=False)))
"""


def _one_line(excinfo, *needles):
  message = str(excinfo.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, message


def test_two_processes_building_one_dataset_both_succeed(tmp_path):
  data_dir = str(tmp_path / "tfds")
  children = [subprocess.Popen(
      [sys.executable, "-c", _BUILD_CHILD, data_dir, str(tmp_path / f"ready{i}"),
       str(tmp_path / "go")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env={**os.environ, "PYTHONPATH": ROOT}) for i in range(2)]
  try:
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
      assert all(c.poll() is None for c in children), [c.communicate()[0] for c in children]
      assert time.monotonic() < deadline, "children did not start"
      time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [c.communicate(timeout=300)[0] for c in children]
  finally:
    for child in children:
      child.kill()
  assert [c.returncode for c in children] == [0, 0], outputs
  assert all("records: 42" in out for out in outputs), outputs
  # One process generated the dataset; the other waited on the lock and reused it.
  assert sum("downloaded and prepared to" in out for out in outputs) == 1, outputs
  assert os.path.isfile(os.path.join(data_dir, "unicode_glyphs", "tiny.build.lock"))
  leftovers = [name for name in os.listdir(os.path.join(data_dir, "unicode_glyphs", "tiny"))
               if name != "1.0.0"]
  assert not leftovers  # No half-written (incomplete) directories left behind.


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory nobody may write to: chmod 0o555, or for root (whom modes do not stop) a
  read-only tmpfs mounted there."""
  path = tmp_path / "read_only"
  path.mkdir()
  path.chmod(0o555)
  mounted = False
  if os.access(path, os.W_OK):
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                            capture_output=True, check=False)
    if result.returncode:
      path.chmod(0o755)
      pytest.skip(f"root, and cannot mount a read-only tmpfs: {result.stderr.decode().strip()}")
    mounted = True
  try:
    yield path
  finally:
    if mounted:
      subprocess.run(["umount", str(path)], check=False)
    path.chmod(0o755)


def test_read_only_data_dir_is_named(read_only_dir):
  builder = sources.get_builder("unicode_glyphs", "tiny", str(read_only_dir))
  with pytest.raises(UsageError) as excinfo:
    sources.ensure_built(builder)
  _one_line(excinfo, str(read_only_dir), "not writable", "writable data.data_dir",
            "build it elsewhere")


def test_data_dir_that_cannot_be_created_is_named(tmp_path):
  """A data_dir below a regular file: the OS refuses it for every user, root too."""
  (tmp_path / "a_file").write_text("not a directory")
  data_dir = str(tmp_path / "a_file" / "tfds")
  builder = sources.get_builder("unicode_glyphs", "tiny", data_dir)
  with pytest.raises(UsageError) as excinfo:
    sources.ensure_built(builder)
  _one_line(excinfo, data_dir, "not writable", "writable data.data_dir", "build it elsewhere")


@pytest.fixture
def copied_tiny(tiny_data_dir, tmp_path):
  """A private copy of the session's tiny dataset, safe to damage."""
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(tiny_data_dir, data_dir)
  builder = sources.get_builder("unicode_glyphs", "tiny", data_dir)
  assert builder.is_prepared()
  shard, = builder.info.splits["test"].filepaths
  return builder, str(shard)


def test_truncated_shard_is_named_with_how_to_rebuild(copied_tiny):
  builder, shard = copied_tiny
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  sources.ensure_built(builder)  # Still "prepared": the damage is inside a file.
  with pytest.raises(UsageError) as excinfo:
    sources.open_split(builder, "test")
  _one_line(excinfo, str(builder.data_dir), os.path.basename(shard), "delete", "rerun")
  assert len(sources.open_split(builder, "train", decode_images=False)) == 284  # Intact.


def test_missing_shard_is_named(copied_tiny):
  builder, shard = copied_tiny
  os.remove(shard)
  with pytest.raises(UsageError) as excinfo:
    sources.open_split(builder, "test", decode_images=False)
  _one_line(excinfo, str(builder.data_dir), os.path.basename(shard), "delete", "rerun")


def test_corrupt_record_is_named_when_read(copied_tiny):
  """A flipped byte inside a record keeps the record count: caught when it is read."""
  builder, shard = copied_tiny
  with open(shard, "r+b") as f:
    f.seek(5000)
    byte = f.read(1)
    f.seek(5000)
    f.write(bytes([byte[0] ^ 0xFF]))
  source = sources.open_split(builder, "test")
  with pytest.raises(UsageError) as excinfo:
    for i in range(len(source)):
      source[i]  # pylint: disable=pointless-statement
  _one_line(excinfo, str(builder.data_dir), "delete", "rerun")


def test_a_prepared_dataset_is_reused_without_writing(copied_tiny):
  """No lock and no write for a prepared dataset, so a read-only copy can be shared."""
  builder, _ = copied_tiny
  root = os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))
  before = sorted(os.walk(root))
  sources.ensure_built(builder)
  assert sorted(os.walk(root)) == before
  assert len(sources.open_split(builder, "test", decode_images=False)) == 42


def test_corrupt_dataset_info_is_named(copied_tiny):
  builder, _ = copied_tiny
  info = os.path.join(builder.data_dir, "dataset_info.json")
  with open(info, "r+b") as f:
    f.truncate(300)
  with pytest.raises(UsageError) as excinfo:
    sources.get_builder("unicode_glyphs", "tiny", os.path.dirname(os.path.dirname(
        os.path.dirname(builder.data_dir))))
  _one_line(excinfo, str(builder.data_dir), "dataset_info.json", "delete", "rerun")
