from mmalign.losses import correspondence, regression  # noqa: F401  (registers them in LOSSES)
