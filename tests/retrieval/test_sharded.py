"""Sharded retrieval: shards searched together equal one index over the whole gallery
(exact), reach its recall (ScaNN), are checked against their manifest, and an index built
by two processes is searched by two and by one."""

import json
import os
import sys

import numpy as np
import pytest

from mmalign.retrieval import searchers, sharded
from mmalign.retrieval.manifest import IndexFileError, Provenance
from tests import processes
from tests.processes import ROOT
from tests.retrieval.reference import clustered, numpy_top_k, recall

PROVENANCE = Provenance(checkpoint_step=7, dataset="test")


def _shards(directory, searcher, gallery, num_shards):
  """Shard s holds rows s, s + num_shards, ... with their global ids, as processes would."""
  counts = []
  for shard in range(num_shards):
    rows = np.arange(shard, len(gallery), num_shards)
    index = searchers.build_index(searcher, gallery[rows], ids=rows, provenance=PROVENANCE)
    index.save(os.path.join(directory, sharded.shard_name(shard, num_shards)))
    counts.append(index.count)
  sharded.write_manifest(directory, searcher, gallery.shape[1], counts, PROVENANCE)


def test_exact_shards_answer_as_one_index(tmp_path):
  gallery, queries = clustered(1, num=3000, num_queries=50)
  _shards(str(tmp_path), "exact", gallery, 3)
  index = sharded.ShardedIndex.load(str(tmp_path), process_index=0, process_count=1)
  scores, ids = index.search(queries, 10)
  whole_scores, whole_ids = searchers.build_index("exact", gallery).search(queries, 10)
  np.testing.assert_array_equal(ids, whole_ids)
  np.testing.assert_allclose(scores, whole_scores, rtol=1e-6, atol=1e-6)


def test_scann_shards_reach_one_indexs_recall(tmp_path):
  gallery, queries = clustered(2, num=12000, num_queries=200)
  _shards(str(tmp_path), "scann", gallery, 2)
  _, truth = numpy_top_k(queries, gallery, 10)
  _, ids = sharded.ShardedIndex.load(str(tmp_path), process_index=0,
                                     process_count=1).search(queries, 10)
  _, whole = searchers.build_index("scann", gallery).search(queries, 10)
  assert recall(ids, truth) >= recall(whole, truth)  # Builds are deterministic.


def test_ties_and_missing_slots_merge_as_one_index_orders_them():
  scores = np.array([[0.5, 0.9, 0.5, -np.inf]], np.float32)
  ids = np.array([[7, 3, 2, -1]], np.int64)
  merged_scores, merged_ids = sharded.merge_top_k(scores, ids, 5)
  np.testing.assert_array_equal(merged_ids, [[3, 2, 7, -1, -1]])
  np.testing.assert_array_equal(merged_scores[0, :3], np.float32([0.9, 0.5, 0.5]))


def test_the_directory_must_hold_exactly_the_manifests_shards(tmp_path):
  gallery, _ = clustered(3, num=600, num_queries=1)
  _shards(str(tmp_path), "exact", gallery, 3)
  os.rename(tmp_path / "shard-00001-of-00003", tmp_path / "moved")
  with pytest.raises(IndexFileError, match="shard shard-00001-of-00003 is missing"):
    sharded.ShardedIndex.load(str(tmp_path), process_index=0, process_count=1)
  os.rename(tmp_path / "moved", tmp_path / "shard-00001-of-00003")
  os.mkdir(tmp_path / "shard-00000-of-00002")
  with pytest.raises(IndexFileError, match="shard-00000-of-00002 is not one of its 3 shards"):
    sharded.ShardedIndex.load(str(tmp_path), process_index=0, process_count=1)
  os.rmdir(tmp_path / "shard-00000-of-00002")
  with open(tmp_path / sharded.SHARDS_FILE) as f:
    manifest = json.load(f)
  manifest["provenance"]["checkpoint_step"] = 8
  with open(tmp_path / sharded.SHARDS_FILE, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(IndexFileError, match="shard shard-00000-of-00003 holds 200 exact items"):
    sharded.ShardedIndex.load(str(tmp_path), process_index=0, process_count=1)


_WORKER = """
import json, sys
sys.path.insert(0, {root!r})
from mmalign.train import distributed
distributed.initialize({address!r}, 2, {process_id})
import jax, numpy as np
from mmalign.retrieval import sharded
from mmalign.retrieval.manifest import Provenance
from tests.retrieval.reference import clustered
gallery, queries = clustered(4, num=4000, num_queries=30)
rows = np.arange(jax.process_index(), len(gallery), 2)
sharded.build_sharded({directory!r}, "exact", gallery[rows], rows,
                      provenance=Provenance(checkpoint_step=1))
scores, ids = sharded.ShardedIndex.load({directory!r}).search(queries, 10)
print(json.dumps({{"ids": ids.tolist(), "scores": scores.tolist()}}))
"""


def test_two_processes_build_and_search_and_one_searches_their_index(tmp_path):
  address = processes.coordinator_address()
  outputs = processes.run_together([
      [sys.executable, "-c", _WORKER.format(root=ROOT, address=address, process_id=i,
                                            directory=str(tmp_path))] for i in range(2)])
  answers = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  gallery, queries = clustered(4, num=4000, num_queries=30)
  whole_scores, whole_ids = searchers.build_index("exact", gallery).search(queries, 10)
  for answer in answers:
    np.testing.assert_array_equal(answer["ids"], whole_ids)
    np.testing.assert_allclose(answer["scores"], whole_scores, rtol=1e-6, atol=1e-6)
  one = sharded.ShardedIndex.load(str(tmp_path), process_index=0, process_count=1)
  assert len(one.shards) == 2
  np.testing.assert_array_equal(one.search(queries, 10)[1], whole_ids)


def test_launch_index_on_two_processes_then_search_on_one(tiny_data_dir, tmp_path):
  """--mode=index on two processes writes one shard each; a one-process search reads both
  and answers as the index one process builds."""
  from experiments.configs import tiny  # pylint: disable=import-outside-toplevel
  from mmalign import experiment as experiment_lib  # pylint: disable=import-outside-toplevel
  from mmalign.retrieval import search  # pylint: disable=import-outside-toplevel
  from mmalign.train import state as train_state  # pylint: disable=import-outside-toplevel
  from mmalign.train import trainer  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.retrieval.searcher = "exact"
  config.train.update(steps=3, checkpoint_every=3)
  workdir = str(tmp_path / "run")
  trainer.train(experiment_lib.for_training(config, workdir))
  address = processes.coordinator_address()
  processes.run_together([
      [sys.executable, os.path.join(ROOT, "launch.py"),
       f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}",
       f"--workdir={workdir}", "--mode=index", f"--config.data.data_dir={tiny_data_dir}",
       "--config.retrieval.searcher=exact", "--config.train.steps=3",
       "--config.train.checkpoint_every=3", f"--coordinator_address={address}",
       "--num_processes=2", f"--process_id={i}"] for i in range(2)])
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  variables, step = train_state.restore_variables(exp)
  index = search.gallery_index(exp, variables, step, config.eval.split)
  assert isinstance(index, sharded.ShardedIndex) and len(index.shards) == 2
  embeddings, ids = search.GALLERIES["image"].embed(exp, variables, config.eval.split)
  queries = experiment_lib.embed_texts(exp, variables, ["latin small letter a", "digit one"])
  expected = searchers.build_index("exact", embeddings, ids=ids).search(queries, 5)
  found = index.search(queries, 5)
  np.testing.assert_array_equal(found[1], expected[1])
  np.testing.assert_allclose(found[0], expected[0], rtol=1e-6, atol=1e-6)
