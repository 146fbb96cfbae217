"""Quickstart: a dual encoder on unicode_glyphs/full, trained in minutes on 2 CPU cores.

  python launch.py --config=experiments/configs/quickstart.py --workdir=workdirs/quickstart

Every registered encoder and fusion module has a kwargs block below, so any of
them is one override away:
  --config.model.text_encoder=lstm --config.model.image_encoder=resnet
  --config.model.fusion=cross_attention --config.loss.matching_weight=1.0
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "unicode_glyphs"
  c.data.config = "full"
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.image_mean = (0.9,)  # Glyphs: mostly white paper.
  c.data.image_std = (0.25,)
  # Resize (shorter side, bicubic) and centre-crop every image to this size, e.g. 224 for
  # published CLIP weights; None: the dataset's own size.
  c.data.image_size = ml_collections.FieldReference(None, field_type=int)
  c.data.max_shift = 0  # Random translation in pixels (training only).
  # Training only: a random crop of this share of the area or more, resized (None: off),
  # and a random horizontal flip.
  c.data.random_crop_min_area = ml_collections.FieldReference(None, field_type=float)
  c.data.random_flip = False
  # A data.name that is not built in is a TFDS dataset prepared in data.data_dir
  # (mmalign/data/external.py): which feature is the image, the caption(s), the group
  # (None: the defaults), and the TFDS split expression of each split (None: its own name).
  none = lambda: ml_collections.FieldReference(None, field_type=str)  # noqa: E731
  c.data.features = ml_collections.ConfigDict({"image": none(), "caption": none(),
                                               "group": none()})
  c.data.splits = ml_collections.ConfigDict({"train": none(), "validation": none(),
                                             "test": none()})
  # Share of every training batch whose caption is paired with another row's image.
  c.data.noisy_pair_fraction = 0.0
  # How a training batch is drawn (mmalign/data/sampling.py): "captions", one image per
  # distinct caption (at most 5,838 rows here); "images" (InfoNCE only), train.batch_size
  # distinct images against min(batch, captions) captions, so the batch can pass that count.
  c.data.sampling = "captions"

  c.text = ml_collections.ConfigDict()  # mmalign.data.tokenizer.TextSettings
  c.text.vocab_size = 2048
  c.text.max_length = 24
  c.text.lowercase = True
  c.text.unicode_normalization = "NFKC"
  c.text.model_type = "bpe"

  c.model = ml_collections.ConfigDict()
  c.model.text_encoder = "bag_of_words"
  c.model.text_kwargs = ml_collections.ConfigDict({
      "bag_of_words": {"width": 256, "mlp_layers": 1, "pooling": "mean"},
      "transformer": {"width": 256, "depth": 2, "heads": 4, "positions": "learned",
                      "pooling": "mean", "dropout": 0.0},
      "lstm": {"width": 256, "num_layers": 1, "bidirectional": True, "pooling": "final"},
      "gru": {"width": 256, "num_layers": 1, "bidirectional": True, "pooling": "final"},
      "clip_text": {"width": 256, "depth": 2, "heads": 4},  # Reads captions ending in an EOT.
  })
  c.model.image_encoder = "cnn"
  c.model.image_kwargs = ml_collections.ConfigDict({
      # Narrow at full resolution, wide at low resolution (README, "Quickstart result").
      "cnn": {"channels": (16, 64, 256), "width": 256},
      "vgg": {"layout": "11", "norm": "batch", "pooling": "mean"},
      "resnet": {"depth": 18, "width": 32, "small_input": True, "norm": "batch"},
      "vit": {"variant": "Ti", "patch_size": 4, "pooling": "mean"},
  })
  c.model.embed_dim = 256
  c.model.projection_kwargs = ml_collections.ConfigDict({"hidden": (), "dropout": 0.0})
  c.model.init_scale = 10.0
  c.model.fusion = ml_collections.FieldReference(None, field_type=str)
  # Training: chance the task classifier sees only the caption or the image (needs task.label).
  c.model.modality_dropout = 0.0
  c.model.fusion_kwargs = ml_collections.ConfigDict({
      "concat": {"missing": "learned"},
      "weighted_sum": {"alpha_mode": "gate"},
      "cross_attention": {"direction": "text_to_image", "heads": 4},
      "joint_transformer": {"depth": 1, "heads": 4},
      "correspondence": {"out_dim": 256},
  })

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "infonce"
  c.loss.kwargs = ml_collections.ConfigDict()
  # Which kernels implementation computes the loss ("auto": Pallas on GPU/TPU, the
  # tiled XLA path on CPU) and the block sizes of each (kernels/api.py).
  c.loss.kernel = ml_collections.ConfigDict({
      "impl": "auto",
      "reference": {},
      "xla_chunked": {"block_size": 512},
      "pallas": {"block_n": 128, "block_m": 128},
  })
  # Shard the loss over the mesh's data axis: None, "all_gather" or "ring" (kernels/distributed.py).
  c.loss.distributed = ml_collections.FieldReference(None, field_type=str)
  c.loss.matching_weight = 0.0  # > 0 with model.fusion: image–text matching (multi-task).
  c.loss.task_weight = 0.0  # > 0 with task.label: classification of the fused pair.
  # Modality imbalance: multiplies the gradient the alignment loss sends into each tower.
  c.loss.modality_weights = ml_collections.ConfigDict({"text": 1.0, "image": 1.0})

  # Multi-task: a class-label feature (e.g. shapes' "color1"), classified from the fused pair.
  c.task = ml_collections.ConfigDict()
  c.task.label = ml_collections.FieldReference(None, field_type=str)

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0
  c.train.batch_size = 256
  c.train.steps = 1500
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 1e-4
  c.train.grad_clip_norm = 1.0
  # Regexes over parameter paths ("text_tower/embed/embedding") that get no update and
  # no weight decay, e.g. ("text_tower/embed",) with model.text_kwargs.*.init_embeddings.
  c.train.frozen = ()
  # (regex, multiplier) pairs: parameters whose path a regex matches (the first that does)
  # learn at that multiple of the learning rate, e.g. (("image_tower", 0.1),) to fine-tune
  # a pretrained tower gently.
  c.train.learning_rate_multipliers = ()
  # Device mesh, -1 = all remaining devices. The batch is split over data × fsdp; arrays of
  # >= fsdp_min_size elements (parameters and their Adam moments) are split over fsdp.
  c.train.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  c.train.fsdp_min_size = 2 ** 14
  # Gradient accumulation (batch_size must divide by micro_batches × devices). Contrastive
  # negatives then come from the micro-batch unless gradient_cache=True (full-batch loss and
  # gradients, recomputing the towers; not with model.fusion / task.label).
  c.train.micro_batches = 1
  c.train.gradient_cache = False
  # How the cache's micro-batches run: "scan" (inside the one compiled step) or "host"
  # (separate programs; for CPU, where XLA runs convolutions in a scan far slower).
  c.train.gradient_cache_loop = "scan"
  c.train.compute_dtype = "float32"  # "bfloat16": bf16 towers, float32 master weights.
  c.train.optimizer_moments_dtype = "float32"  # "bfloat16": Adam moments stored in bf16.
  # What a NaN/inf loss or gradient does: "stop" (raise, naming the step) or "skip" (leave
  # params and optimizer state unchanged for that step and go on).
  c.train.on_nonfinite = "stop"
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.ks = (1, 5, 10)
  c.eval.batch_size = 512

  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.searcher = "scann"  # Or "exact": the tiled top-k (mmalign/retrieval/searchers.py).
  c.retrieval.k = 10
  c.retrieval.num_leaves = ml_collections.FieldReference(None, field_type=int)
  c.retrieval.num_leaves_to_search = ml_collections.FieldReference(None, field_type=int)
  c.retrieval.reorder = 100
  c.retrieval.example_query = "latin capital letter a with ring above"

  # Start from published weights (mmalign/checkpoints/): a local file, its format taken from
  # the suffix unless set. "glove" (.txt, .vec): word vectors into the text tower's token
  # embedding, through this run's tokenizer; the encoder's width must equal their length.
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ml_collections.FieldReference(None, field_type=str)
  c.init.format = ml_collections.FieldReference(None, field_type=str)
  # The tokenizer the checkpoint was trained with, used instead of training one: a
  # tokenizer.json, a folder holding one (a Hugging Face folder as init.checkpoint gives its
  # own), or open_clip's BPE merges (.txt.gz); text.max_length still applies.
  c.init.tokenizer = ml_collections.FieldReference(None, field_type=str)
  return c
