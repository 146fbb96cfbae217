"""Similarity-matrix kernels for contrastive alignment, independent of `mmalign`.

Three interchangeable implementations of the same four functions (InfoNCE,
sigmoid and correspondence losses; inner-product top-k):

  reference.py    plain jnp that materialises the full [N, M] logits: the oracle.
  xla_chunked.py  lax.scan over column blocks; O(N·block) memory, any backend.
  pallas_gpu.py / pallas_tpu.py  hand-written Pallas kernels.
  distributed.py  shard_map strategies over a device mesh.

`api.py` chooses among them (`impl="auto"` by default). This package imports
nothing from `mmalign`, so it can be tested and benchmarked on its own.
"""
