"""Retrieval on CPU: exact search vs ScaNN vs bench-only peers, on the same data in one run.

  python -m benchmarks.retrieval                    # 1M x 128 mixture, all methods; slow
  python -m benchmarks.retrieval --n=200000         # smaller gallery
  python -m benchmarks.retrieval --quick            # smoke test: tiny N, seconds

Data: `--n` unit vectors of `--dim` from a clustered, skewed Gaussian mixture (cluster
sizes ~ 1/rank, per-cluster spreads log-normal, a decaying noise spectrum in a random
basis, centres grouped under a few super-centres), and `--queries` held-out queries
drawn from the same mixture. Hardness check: a one-probe IVF must stay below 0.9 recall.
If a trained quickstart workdir exists (`--real_workdir`), its test-split image
embeddings are searched with its caption embeddings as well.

Methods (registry `METHODS`): exact search (numpy matmul + argpartition, the project's
tiled JAX top-k through `ExactIndex`, ScaNN brute force), ScaNN tree + AH + reorder
through `ScannIndex` (built with the default `ScannConfig`, then swept over leaves
probed and reorder depth), and the peers faiss-cpu (Flat, IVF-PQ fast-scan + refine,
HNSW) and hnswlib when installed (`pip install -e .[bench]`; never imported elsewhere).
Per method: build time, index size, batched QPS at recall@k >= 0.90 / 0.95 / 0.99
(the fastest swept point reaching it), single-query p50 latency at its 0.95 point.
The BLAS sgemm rate is measured in the same run, as the ceiling for exact search.

Writes `<out_dir>/retrieval.json`, `.md` and `retrieval.png` (recall vs QPS).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import os
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app, flags, logging
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/retrieval.py` as well as `-m`.
  sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
from benchmarks.galleries import mixture, unit_rows  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from mmalign import utils  # noqa: E402
from mmalign.retrieval import tuning  # noqa: E402
from mmalign.retrieval.exact_index import ExactConfig, ExactIndex  # noqa: E402
from mmalign.retrieval.scann_index import ScannConfig, ScannIndex  # noqa: E402
# pylint: enable=wrong-import-position

_N = flags.DEFINE_integer("n", None, "Gallery size (default 1,000,000; 4,000 if --quick).")
_QUERIES = flags.DEFINE_integer("queries", None, "Held-out queries (default 1000; 100 if "
                                "--quick).")
_DIM = flags.DEFINE_integer("dim", 128, "Embedding width d.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query (recall@k).")
_CLUSTERS = flags.DEFINE_integer("clusters", None, "Mixture components (default 2000; 100 "
                                 "if --quick).")
_SPREAD = flags.DEFINE_float("spread", 0.6, "Within-cluster spread (larger: harder).")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: tiny N, few sweep points.")
_METHODS = flags.DEFINE_list("methods", None, "Methods to run (default: all registered).")
_SINGLE = flags.DEFINE_integer("single_queries", None, "Queries timed one at a time for "
                               "the p50 latency (default 300; 20 if --quick).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed repeats of each batched search; the "
                                "best counts (default 3; 1 if --quick).")
_REAL_WORKDIR = flags.DEFINE_string("real_workdir", os.path.join(ROOT, "workdirs", "quickstart"),
                                    "Trained workdir whose test split is also searched "
                                    "(skipped when it holds no checkpoint).")
_REAL_CONFIG = flags.DEFINE_string("real_config", os.path.join(
    ROOT, "experiments", "configs", "quickstart.py"), "Config of --real_workdir.")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where retrieval.json, .md and .png go.")

TARGETS = (0.90, 0.95, 0.99)
QPS_RATIO_TARGET = 12.0
P50_TARGET_MS = 0.3
BUILD_TARGET_S = 30.0
SIZE_TARGET = 1.2
SGEMM_FRACTION_TARGET = 0.7
HARDNESS_LIMIT = 0.9


# ------------------------------------------------------------------------------ data


# ------------------------------------------------------------------------------ timing


@dataclasses.dataclass
class Context:
  gallery: np.ndarray  # [n, d] float32 unit rows
  queries: np.ndarray  # [q, d] float32 unit rows
  truth: np.ndarray | None  # [q, k] exact ids (None until the numpy method ran)
  k: int
  quick: bool
  repeats: int
  single_queries: int
  tmp: str

  @property
  def exact_single_queries(self) -> int:
    """Exact single searches take milliseconds to a second at 1M: fewer of them."""
    return max(3, self.single_queries // 30)


def single_p50_ms(search_one: Callable[[np.ndarray], Any], queries: np.ndarray,
                  count: int) -> float:
  """Median wall time of one-query searches (after two warm-ups), in milliseconds."""
  search_one(queries[0])
  search_one(queries[1])
  times = []
  for query in queries[:count]:
    started = time.perf_counter()
    search_one(query)
    times.append(time.perf_counter() - started)
  return 1e3 * statistics.median(times)


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def point(params: dict[str, Any], recall: float, qps: float) -> dict[str, Any]:
  return {"params": params, "recall": round(recall, 5), "qps": round(qps, 1)}


def recall_of(ctx: Context, found: np.ndarray) -> float:
  """Tie-aware recall@k (items tied with the k-th true neighbour count): the real
  gallery holds duplicate embeddings, between which exact methods pick arbitrarily."""
  return tuning.recall_at_k(np.asarray(found), ctx.truth, ctx.queries, ctx.gallery)


# ------------------------------------------------------------------------------ methods


def _numpy_top_k(gallery: np.ndarray, queries: np.ndarray, k: int,
                 chunk: int = 64) -> np.ndarray:
  """Exact ids [q, k], best first: matmul per query chunk, argpartition, sort the k."""
  out = np.empty((len(queries), k), np.int64)
  for start in range(0, len(queries), chunk):
    scores = queries[start:start + chunk] @ gallery.T  # [c, n]
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [c, k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    out[start:start + chunk] = np.take_along_axis(top, order, 1)
  return out


def run_numpy(ctx: Context) -> dict[str, Any]:
  """Exact: float32 matmul + argpartition. Its answer is the ground truth for the rest."""
  search = lambda q: _numpy_top_k(ctx.gallery, q, ctx.k)
  qps, found = tuning.batched_qps(search, ctx.queries, ctx.repeats)
  ctx.truth = found
  p50 = single_p50_ms(lambda q: search(q[None]), ctx.queries, ctx.exact_single_queries)
  return {"kind": "exact", "build_s": 0.0, "index_bytes": ctx.gallery.nbytes,
          "points": [point({}, 1.0, qps)], "single_p50_ms": p50,
          "note": "defines the ground truth (recall 1 by definition)"}


def run_jax_tiled(ctx: Context) -> dict[str, Any]:
  """Exact: `ExactIndex` over kernels.api.top_k (xla_chunked), best key block size."""
  started = time.perf_counter()
  index = ExactIndex.build(ctx.gallery, ExactConfig(num_neighbors=ctx.k, impl="xla_chunked"))
  build_s = time.perf_counter() - started
  points, best = [], None
  for block in ((4096,) if ctx.quick else (2048, 4096)):
    index.params["config"]["block_size"] = block
    qps, found = tuning.batched_qps(lambda q: index.search(q, ctx.k)[1], ctx.queries, ctx.repeats)
    points.append(point({"block_size": block}, recall_of(ctx, found), qps))
    best = max(best or points[-1], points[-1], key=lambda p: p["qps"])
  index.params["config"]["block_size"] = best["params"]["block_size"]
  p50 = single_p50_ms(lambda q: index.search(q, ctx.k), ctx.queries, ctx.exact_single_queries)
  return {"kind": "exact", "build_s": build_s, "index_bytes": ctx.gallery.nbytes,
          "points": points, "single_p50_ms": p50}


def run_scann_brute_force(ctx: Context) -> dict[str, Any]:
  """Exact: ScaNN's float32 brute force, through `ScannIndex`."""
  config = ScannConfig(num_neighbors=ctx.k, brute_force_below=len(ctx.gallery) + 1)
  started = time.perf_counter()
  index = ScannIndex.build(ctx.gallery, config)
  build_s = time.perf_counter() - started
  qps, found = tuning.batched_qps(lambda q: index.search(q, ctx.k)[1], ctx.queries, ctx.repeats)
  p50 = single_p50_ms(lambda q: index.search(q, ctx.k), ctx.queries, ctx.exact_single_queries)
  size = directory_bytes(index.save(os.path.join(ctx.tmp, "scann_bf")))
  return {"kind": "exact", "build_s": build_s, "index_bytes": size,
          "points": [point({}, recall_of(ctx, found), qps)], "single_p50_ms": p50}


def _scann_leaves(num_leaves: int, quick: bool) -> list[int]:
  """Leaves to probe. The quick ladder ends at every leaf: ScaNN's k-means is not
  bit-reproducible across runs and CPUs, so on a small gallery a partial probe can miss
  recall 0.95 by chance, while probing all leaves bounds recall by AH + reorder alone."""
  fractions = (0.01, 0.03, 0.1, 0.3, 1.0) if quick else (
      0.003, 0.006, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.25)
  return sorted({max(1, min(num_leaves, round(f * num_leaves))) for f in fractions} | {1})


def run_scann_tree(ctx: Context) -> dict[str, Any]:
  """ScaNN tree + AH + reorder built with the default ScannConfig, then swept."""
  config = ScannConfig(num_neighbors=ctx.k)
  started = time.perf_counter()
  index = ScannIndex.build(ctx.gallery, config)
  build_s = time.perf_counter() - started
  size = directory_bytes(index.save(os.path.join(ctx.tmp, "scann_tree")))
  if index.is_brute_force:
    return {**run_scann_brute_force(ctx), "kind": "approx", "note": "gallery below "
            "brute_force_below: ScaNN searches it exactly"}
  qps, found = tuning.batched_qps(lambda q: index.search(q, ctx.k)[1], ctx.queries, ctx.repeats)
  tree = index.params["tree"]
  default = point({"leaves": tree["num_leaves_to_search"], "reorder": index.params["reorder"],
                   "default": True}, recall_of(ctx, found), qps)
  swept = tuning.sweep(index, ctx.queries, ctx.truth, ctx.k,
                       leaves=_scann_leaves(tree["num_leaves"], ctx.quick),
                       reorders=(20, 50, 100) if ctx.quick else (20, 40, 70, 100, 200, 400),
                       target_recall=0.995, min_gain=0.002, repeats=ctx.repeats,
                       gallery=ctx.gallery)
  points = [default] + [point({"leaves": p.leaves_to_search, "reorder": p.reorder}, p.recall,
                              p.queries_per_s) for p in swept]
  chosen, met = tuning.choose(swept, 0.95)
  index.set_search_params(num_leaves_to_search=chosen.leaves_to_search, reorder=chosen.reorder)
  p50 = single_p50_ms(lambda q: index.search(q, ctx.k), ctx.queries, ctx.single_queries)
  return {"kind": "approx", "build_s": build_s, "index_bytes": size, "points": points,
          "single_p50_ms": p50, "num_leaves": tree["num_leaves"],
          "training_sample_size": tree["training_sample_size"],
          "tuned_0.95": {"leaves": chosen.leaves_to_search, "reorder": chosen.reorder,
                         "recall": chosen.recall, "met": met}}


class PeerMissing(Exception):
  """A bench-only peer library is not installed."""


def _peer(module: str):
  """Imports a bench-only peer lazily; a missing one skips its methods with a message.

  OMP_WAIT_POLICY=PASSIVE (unless set): on a shared 2-core machine faiss's spinning
  OpenMP workers stall each other (a 4,000-point IVF-PQ build took 8 s instead of 0.5 s).
  """
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # Read when libgomp loads.
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise PeerMissing(f"{module} not installed ({e.__class__.__name__}); "
                      "`pip install -e .[bench]` to include it") from None


def _faiss_size(faiss, index, tmp: str) -> int:
  path = os.path.join(tmp, "faiss.index")
  faiss.write_index(index, path)
  size = os.path.getsize(path)
  os.remove(path)
  return size


def run_faiss_flat(ctx: Context) -> dict[str, Any]:
  """Peer, exact: faiss IndexFlatIP (BLAS sgemm + heaps)."""
  faiss = _peer("faiss")
  started = time.perf_counter()
  index = faiss.IndexFlatIP(ctx.gallery.shape[1])
  index.add(ctx.gallery)
  build_s = time.perf_counter() - started
  qps, found = tuning.batched_qps(lambda q: index.search(q, ctx.k)[1], ctx.queries, ctx.repeats)
  p50 = single_p50_ms(lambda q: index.search(q[None], ctx.k), ctx.queries,
                      ctx.exact_single_queries)
  return {"kind": "exact", "build_s": build_s, "index_bytes": _faiss_size(faiss, index, ctx.tmp),
          "points": [point({}, recall_of(ctx, found), qps)], "single_p50_ms": p50}


def _sweep_peer(ctx: Context, settings: list[dict[str, Any]], apply: Callable[[dict], None],
                search: Callable[[np.ndarray], np.ndarray], stop_key: str | None = None):
  """Batched (recall, QPS) per setting, in order. Within a `stop_key` group the walk
  stops at recall 0.995 or when a step gains less than 0.002 (a plateau), as for ScaNN."""
  points, done, last = [], set(), {}
  for setting in settings:
    group = setting.get(stop_key) if stop_key else None
    if group in done:
      continue
    apply(setting)
    qps, found = tuning.batched_qps(search, ctx.queries, ctx.repeats)
    points.append(point(setting, recall_of(ctx, found), qps))
    recall = points[-1]["recall"]
    if recall >= 0.995 or recall - last.get(group, -np.inf) < 0.002:
      done.add(group)
    last[group] = recall
  return points


def _p50_at(ctx: Context, points, apply, search_one) -> float:
  """Single-query p50 at the fastest point reaching 0.95 (else the most accurate)."""
  ok = [p for p in points if p["recall"] >= 0.95]
  best = max(ok, key=lambda p: p["qps"]) if ok else max(points, key=lambda p: p["recall"])
  apply(best["params"])
  return single_p50_ms(search_one, ctx.queries, ctx.single_queries)


def run_faiss_ivfpq_fastscan(ctx: Context) -> dict[str, Any]:
  """Peer: IVF + 4-bit PQ fast-scan (d/2 sub-quantisers) + exact refine over raw vectors.

  Built with the L2 metric: on unit rows L2 order equals cosine order, and faiss's PQ
  fast-scan with METRIC_INNER_PRODUCT plateaued near 0.88 recall here even with a
  50x refine (L2 reaches 0.99).
  """
  faiss = _peer("faiss")
  n, d = ctx.gallery.shape
  nlist = max(4, int(round(np.sqrt(n))))
  started = time.perf_counter()
  index = faiss.index_factory(d, f"IVF{nlist},PQ{d // 2}x4fs,RFlat", faiss.METRIC_L2)
  sample = np.random.default_rng(0).choice(n, min(n, 100 * nlist, 250_000), replace=False)
  index.train(ctx.gallery[np.sort(sample)])
  index.add(ctx.gallery)
  build_s = time.perf_counter() - started
  ivf = faiss.extract_index_ivf(index)

  def apply(setting):
    ivf.nprobe = setting["nprobe"]
    index.k_factor = setting["k_factor"]

  probes = [1, 2, 4, 8] if ctx.quick else [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64]
  settings = [{"k_factor": f, "nprobe": p} for f in (2, 5, 10, 20, 50) for p in probes
              if p <= nlist]
  points = _sweep_peer(ctx, settings, apply, lambda q: index.search(q, ctx.k)[1], "k_factor")
  p50 = _p50_at(ctx, points, apply, lambda q: index.search(q[None], ctx.k))
  one_probe = [p["recall"] for p in points if p["params"]["nprobe"] == 1]
  return {"kind": "approx", "build_s": build_s,
          "index_bytes": _faiss_size(faiss, index, ctx.tmp), "points": points,
          "single_p50_ms": p50, "nlist": nlist,
          "one_probe_recall": max(one_probe) if one_probe else None}


def run_faiss_hnsw(ctx: Context) -> dict[str, Any]:
  """Peer: faiss IndexHNSWFlat, M = 16, efConstruction = 40."""
  faiss = _peer("faiss")
  started = time.perf_counter()
  index = faiss.IndexHNSWFlat(ctx.gallery.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
  index.hnsw.efConstruction = 40
  index.add(ctx.gallery)
  build_s = time.perf_counter() - started

  def apply(setting):
    index.hnsw.efSearch = setting["ef"]

  settings = [{"ef": ef} for ef in ((16, 32, 64) if ctx.quick else (16, 24, 32, 48, 64, 96,
                                                                      128, 192, 256, 384))]
  points = _sweep_peer(ctx, settings, apply, lambda q: index.search(q, ctx.k)[1], "group")
  p50 = _p50_at(ctx, points, apply, lambda q: index.search(q[None], ctx.k))
  return {"kind": "approx", "build_s": build_s,
          "index_bytes": _faiss_size(faiss, index, ctx.tmp), "points": points,
          "single_p50_ms": p50}


def run_hnswlib(ctx: Context) -> dict[str, Any]:
  """Peer: hnswlib, inner product, M = 16, ef_construction = 40 (as faiss's HNSW)."""
  hnswlib = _peer("hnswlib")
  n, d = ctx.gallery.shape
  started = time.perf_counter()
  index = hnswlib.Index(space="ip", dim=d)
  index.init_index(max_elements=n, ef_construction=40, M=16, random_seed=0)
  index.set_num_threads(os.cpu_count() or 1)
  index.add_items(ctx.gallery, np.arange(n))
  build_s = time.perf_counter() - started

  def apply(setting):
    index.set_ef(max(setting["ef"], ctx.k))

  settings = [{"ef": ef} for ef in ((16, 32, 64) if ctx.quick else (16, 24, 32, 48, 64, 96,
                                                                      128, 192, 256, 384))]
  search = lambda q: index.knn_query(q, k=ctx.k)[0]
  points = _sweep_peer(ctx, settings, apply, search, "group")
  p50 = _p50_at(ctx, points, apply, lambda q: index.knn_query(q[None], k=ctx.k))
  path = os.path.join(ctx.tmp, "hnswlib.bin")
  index.save_index(path)
  size = os.path.getsize(path)
  os.remove(path)
  return {"kind": "approx", "build_s": build_s, "index_bytes": size, "points": points,
          "single_p50_ms": p50}


# name -> (what it is, runner); numpy first: it computes the ground truth.
METHODS: dict[str, tuple[str, Callable[[Context], dict[str, Any]]]] = {
    "numpy": ("exact: numpy matmul + argpartition", run_numpy),
    "jax_tiled": ("exact: kernels.api.top_k (xla_chunked) via ExactIndex", run_jax_tiled),
    "scann_brute_force": ("exact: ScaNN brute force via ScannIndex", run_scann_brute_force),
    "scann": ("ScaNN tree + AH + reorder via ScannIndex (default config, swept)",
              run_scann_tree),
    "faiss_flat": ("peer, exact: faiss IndexFlatIP", run_faiss_flat),
    "faiss_ivfpq_fs": ("peer: faiss IVF + PQ 4-bit fast-scan + RFlat refine",
                       run_faiss_ivfpq_fastscan),
    "faiss_hnsw": ("peer: faiss HNSWFlat (M 16, efC 40)", run_faiss_hnsw),
    "hnswlib": ("peer: hnswlib (M 16, efC 40)", run_hnswlib),
}


# ------------------------------------------------------------------------------ run


def sgemm_rate(gallery: np.ndarray, queries: np.ndarray, repeats: int) -> float:
  """GFLOP/s of the [q, d] x [d, n] products exact search needs, with no selection."""
  chunk = 65_536
  out = np.empty((len(queries), min(chunk, len(gallery))), np.float32)

  def products():
    for start in range(0, len(gallery), chunk):
      block = gallery[start:start + chunk]
      np.matmul(queries, block.T, out=out[:, :len(block)])

  _, times = utils.time_calls(products, repeats=max(2, repeats), warmup=0)
  return 2 * len(queries) * len(gallery) * gallery.shape[1] / min(times) / 1e9


def qps_at(points: list[dict[str, Any]], target: float) -> float | None:
  ok = [p["qps"] for p in points if p["recall"] >= target]
  return max(ok) if ok else None


def run_suite(ctx: Context, names: list[str], log) -> dict[str, Any]:
  """Runs each method on ctx; a failure or missing peer is recorded, not raised."""
  results = {}
  for name in names:
    what, runner = METHODS[name]
    started = time.perf_counter()
    try:
      row = runner(ctx)
      row["status"] = "ok"
    except PeerMissing as e:
      row = {"status": f"skipped: {e}"}
    row.update(what=what, wall_s=round(time.perf_counter() - started, 1))
    if row["status"] == "ok":
      row["qps_at"] = {f"{t:.2f}": qps_at(row["points"], t) for t in TARGETS}
    results[name] = row
    log(f"{name:18s} {row['wall_s']:7.1f}s  " + (
        " ".join(f"R{t}:{row['qps_at'][t] or '-'}" for t in row["qps_at"])
        + f"  p50 {row['single_p50_ms']:.3f} ms  build {row['build_s']:.1f}s"
        if row["status"] == "ok" else row["status"]))
  return results


def targets(results: dict[str, Any], n: int, dim: int, sgemm: float,
            jax_flops: float | None) -> dict[str, Any]:
  """The issue's targets, measured ratios in this run, each with met: true/false."""
  exact = {name: r["points"][0]["qps"] for name, r in results.items()
           if r["status"] == "ok" and r["kind"] == "exact"}
  fastest = max(exact, key=exact.get) if exact else None
  scann = results.get("scann", {})
  out: dict[str, Any] = {"fastest_exact": fastest}
  if scann.get("status") == "ok":
    qps95 = scann["qps_at"]["0.95"]
    ratio = qps95 / exact[fastest] if qps95 and fastest else None
    raw = n * dim * 4
    out.update({
        "qps_ratio_at_0.95": {"value": ratio, "target": QPS_RATIO_TARGET,
                              "met": bool(ratio and ratio >= QPS_RATIO_TARGET)},
        "single_p50_ms": {"value": scann["single_p50_ms"], "target": P50_TARGET_MS,
                          "met": scann["single_p50_ms"] <= P50_TARGET_MS},
        "build_s": {"value": scann["build_s"], "target": BUILD_TARGET_S,
                    "met": scann["build_s"] <= BUILD_TARGET_S},
        "index_size_ratio": {"value": scann["index_bytes"] / raw, "target": SIZE_TARGET,
                             "met": scann["index_bytes"] / raw <= SIZE_TARGET}})
  if jax_flops is not None:
    fraction = jax_flops / sgemm
    out["jax_tiled_fraction_of_sgemm"] = {"value": fraction, "target": SGEMM_FRACTION_TARGET,
                                          "met": fraction >= SGEMM_FRACTION_TARGET}
  return out


def hardness(results: dict[str, Any]) -> dict[str, Any]:
  """One-probe IVF recall: the data must be hard enough that it stays below 0.9."""
  values = {}
  scann = results.get("scann", {})
  if scann.get("status") == "ok":
    one = [p["recall"] for p in scann["points"] if p["params"].get("leaves") == 1]
    if one:
      values["scann_one_leaf_best_reorder"] = max(one)
  ivf = results.get("faiss_ivfpq_fs", {})
  if ivf.get("status") == "ok" and ivf.get("one_probe_recall") is not None:
    values["faiss_ivf_nprobe1_best_refine"] = ivf["one_probe_recall"]
  return {"one_probe_recall": values, "limit": HARDNESS_LIMIT,
          "met": bool(values) and all(v < HARDNESS_LIMIT for v in values.values())}


def real_embeddings(workdir: str, config_path: str, log):
  """(image gallery [n, d], caption queries [g, d]) of a trained workdir, or a reason."""
  checkpoints = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
    return None, f"no trained workdir at {os.path.relpath(workdir, ROOT)} (no checkpoints/)"
  # pylint: disable=import-outside-toplevel
  import importlib.util
  from mmalign import experiment as experiment_lib
  from mmalign.train import state as train_state
  from mmalign.data import pipeline, sources
  # pylint: enable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("real_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  variables, step = train_state.restore_variables(exp)
  split = config.eval.split
  log(f"embedding {split} of {workdir} (step {step})")
  images = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder, split),
                                       config.eval.batch_size)
  index = pipeline.index_split(sources.open_split(exp.builder, split, decode_images=False))
  texts = experiment_lib.embed_texts(exp, variables, index.group_captions)
  return (unit_rows(images), unit_rows(texts)), f"{config.data.name}/{config.data.config} {split}, step {step}"


# ------------------------------------------------------------------------------ report


def _fmt(value, digits=0, suffix="") -> str:
  if value is None:
    return "–"
  return f"{value:,.{digits}f}{suffix}"


def results_table(results: dict[str, Any], raw_bytes: int) -> list[str]:
  lines = ["| method | build s | index MiB (× raw) | QPS @0.90 | QPS @0.95 | QPS @0.99 | "
           "best recall | single p50 ms | status |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for name, r in results.items():
    if r["status"] != "ok":
      lines.append(f"| {name} | – | – | – | – | – | – | – | {r['status']} |")
      continue
    size = f"{r['index_bytes'] / 2**20:,.0f} ({r['index_bytes'] / raw_bytes:.2f}×)"
    best = max(p["recall"] for p in r["points"])
    qps = " | ".join(_fmt(r["qps_at"][f"{t:.2f}"]) for t in TARGETS)
    lines.append(f"| {name} | {r['build_s']:.1f} | {size} | {qps} | {best:.4f} | "
                 f"{r['single_p50_ms']:.3f} | ok |")
  return lines


def to_markdown(report: dict[str, Any]) -> str:
  synthetic = report["synthetic"]
  lines = [
      "# Retrieval on CPU: exact search, ScaNN and peers",
      "",
      f"Command: `{report['command']}`  ",
      f"{report['date']}; {report['cpu_count']} CPUs (shared; 1-minute load average "
      f"{report['load_average_start']} at the start, {report['load_average_end']} at the end); "
      f"whole run {report['wall_s']:.0f} s. Versions: {report['versions']}.",
      "",
      f"## Synthetic: {synthetic['n']:,} × {synthetic['dim']} gallery, "
      f"{synthetic['queries']:,} held-out queries, recall@{report['k']}",
      "",
      f"Skewed clustered Gaussian mixture ({synthetic['clusters']} clusters, spread "
      f"{synthetic['spread']}). Ground truth: the numpy exact search. QPS: batched search of "
      "all queries, best of the repeats, at the fastest swept setting reaching that recall "
      "(– : not reached). Single p50: one query at a time at the method's 0.95 setting "
      "(exact methods: over fewer queries). Index size: bytes on disk (numpy / JAX: the raw "
      "float32 gallery). faiss ran with OMP_WAIT_POLICY="
      f"{report['omp_wait_policy']} (spinning OpenMP workers stall on a shared machine).",
      "",
      f"BLAS sgemm rate (the [q, d] × [d, n] products alone, best of repeats): "
      f"{synthetic['sgemm_gflops']:.1f} GFLOP/s.",
      "",
  ]
  lines += results_table(synthetic["results"], synthetic["n"] * synthetic["dim"] * 4)
  hard = synthetic["hardness"]
  lines += ["", f"Hardness check (one-probe IVF recall must stay below {hard['limit']}): "
            + (", ".join(f"{k} = {v:.3f}" for k, v in hard["one_probe_recall"].items())
               or "not measured") + f" → {'met' if hard['met'] else 'NOT met'}.", ""]
  tuned = synthetic["results"].get("scann", {}).get("tuned_0.95")
  if tuned:
    lines += [f"ScaNN tuned point for recall 0.95 (`tuning.choose` over the sweep): "
              f"leaves_to_search = {tuned['leaves']} of "
              f"{synthetic['results']['scann']['num_leaves']}, reorder = {tuned['reorder']}, "
              f"measured recall {tuned['recall']:.4f}.", ""]
  lines += ["## Targets (ratios measured in this run)", "",
            "| target | measured | goal | met |", "|---|---:|---:|---|"]
  names = {"qps_ratio_at_0.95": ("ScaNN QPS at recall 0.95 / fastest exact QPS", "≥ {:g}×"),
           "single_p50_ms": ("ScaNN single-query p50 (ms)", "≤ {:g}"),
           "build_s": ("ScaNN build (s)", "≤ {:g}"),
           "index_size_ratio": ("ScaNN index size / raw float32", "≤ {:g}"),
           "jax_tiled_fraction_of_sgemm": ("tiled JAX top-k FLOP rate / sgemm rate", "≥ {:g}")}
  for key, (label, goal) in names.items():
    t = synthetic["targets"].get(key)
    if t:
      lines.append(f"| {label} | {_fmt(t['value'], 3)} | {goal.format(t['target'])} | "
                   f"{'met' if t['met'] else '**not met**'} |")
  lines.append(f"\nFastest exact method: {synthetic['targets'].get('fastest_exact')}.")
  real = report["real"]
  lines += ["", "## Real embeddings (trained quickstart model)", ""]
  if real.get("results"):
    lines += [f"{real['what']}: {real['n']:,} image embeddings searched by {real['queries']:,} "
              "caption embeddings (text→image).", ""]
    lines += results_table(real["results"], real["n"] * real["dim"] * 4)
  else:
    lines.append(f"Skipped: {real['reason']}. Train it with `python launch.py "
                 "--config=experiments/configs/quickstart.py --workdir=workdirs/quickstart`, "
                 "then rerun.")
  lines += ["", "Plot: `retrieval.png` (recall@k vs batched QPS, log scale).", ""]
  return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
  """Recall vs batched QPS per method (exact methods as single points)."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=import-outside-toplevel
  synthetic = report["synthetic"]
  figure = Figure(figsize=(7.5, 4.8), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for name, r in synthetic["results"].items():
    if r["status"] != "ok":
      continue
    points = sorted(r["points"], key=lambda p: p["recall"])
    frontier = []  # Pareto: for rising recall, the best QPS so far from the right.
    for p in reversed(points):
      if not frontier or p["qps"] > frontier[-1]["qps"]:
        frontier.append(p)
    frontier = frontier[::-1]
    style = "s" if r["kind"] == "exact" else "o-"
    axes.plot([p["recall"] for p in frontier], [p["qps"] for p in frontier], style,
              label=name, markersize=5)
  for target in TARGETS:
    axes.axvline(target, color="grey", alpha=0.3, linestyle=":")
  axes.set_yscale("log")
  axes.set_xlabel(f"recall@{report['k']}")
  axes.set_ylabel("queries / s (batched)")
  axes.set_xlim(left=max(0.5, axes.get_xlim()[0]))
  axes.set_title(f"{synthetic['n']:,} × {synthetic['dim']}, {synthetic['queries']} queries, "
                 f"{report['cpu_count']} CPUs")
  axes.grid(alpha=0.3, which="both")
  axes.legend(fontsize=8)
  figure.savefig(path, format="png", dpi=110)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Library INFO lines (faiss loader, XLA) off.
  started = time.perf_counter()
  quick = _QUICK.value
  n = _N.value or (4_000 if quick else 1_000_000)
  num_queries = _QUERIES.value or (100 if quick else 1000)
  clusters = _CLUSTERS.value or (100 if quick else 2000)
  names = _METHODS.value or list(METHODS)
  unknown = [m for m in names if m not in METHODS]
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; allowed: {', '.join(METHODS)}")
  names = ["numpy"] + [m for m in names if m != "numpy"]  # numpy gives the ground truth.
  log = lambda text: print(text, flush=True)
  load_start = round(os.getloadavg()[0], 2)
  log(f"data: {n} x {_DIM.value}, {num_queries} queries, {clusters} clusters")
  gallery, queries = mixture(n, num_queries, _DIM.value, clusters, _SPREAD.value, _SEED.value)
  repeats = _REPEATS.value or (1 if quick else 3)
  single = _SINGLE.value or (20 if quick else 300)
  with tempfile.TemporaryDirectory() as tmp:
    ctx = Context(gallery, queries, None, _K.value, quick, repeats, single, tmp)
    sgemm = sgemm_rate(gallery, queries, repeats)
    log(f"sgemm {sgemm:.1f} GFLOP/s")
    results = run_suite(ctx, names, log)
    jax_row = results.get("jax_tiled", {})
    # Each query costs 2 · n · d FLOPs; the best block size counts.
    jax_flops = (max(2 * n * _DIM.value * p["qps"] / 1e9 for p in jax_row["points"])
                 if jax_row.get("status") == "ok" else None)
    synthetic = {"n": n, "dim": _DIM.value, "queries": num_queries, "clusters": clusters,
                 "spread": _SPREAD.value, "seed": _SEED.value, "sgemm_gflops": sgemm,
                 "jax_tiled_gflops": jax_flops, "results": results,
                 "targets": targets(results, n, _DIM.value, sgemm, jax_flops),
                 "hardness": hardness(results)}
    del ctx, gallery
    real_data, what = (None, "not run in --quick mode") if quick else real_embeddings(
        _REAL_WORKDIR.value, _REAL_CONFIG.value, log)
    real: dict[str, Any] = {"reason": what}
    if real_data is not None:
      images, texts = real_data
      real_ctx = Context(images, texts, None, _K.value, quick, repeats, single, tmp)
      real = {"what": what, "n": len(images), "dim": images.shape[1], "queries": len(texts),
              "results": run_suite(real_ctx, [m for m in names if m in (
                  "numpy", "jax_tiled", "scann_brute_force", "scann", "faiss_flat")], log)}
  report = {
      "command": " ".join(["python -m benchmarks.retrieval"]
                          + [shlex.quote(a) for a in sys.argv[1:]]),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpu_count": os.cpu_count(), "k": _K.value, "load_average_start": load_start,
      "load_average_end": round(os.getloadavg()[0], 2), "versions": _versions(),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
      "synthetic": synthetic, "real": real, "wall_s": time.perf_counter() - started}
  stem = write_report(_OUT_DIR.value, "retrieval", report, to_markdown(report))
  plot(report, stem + ".png")
  log(f"wrote {stem}.png; whole run {report['wall_s']:.0f} s")


def _versions() -> str:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  found = []
  for name in ("scann", "numpy", "jax", "faiss-cpu", "hnswlib"):
    try:
      found.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
      found.append(f"{name} not installed")
  return ", ".join(found)


if __name__ == "__main__":
  app.run(main)
