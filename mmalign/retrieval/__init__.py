"""Retrieval over embedding galleries: `base.Index` with its backends ("scann", "exact")
chosen by name in `searchers`, their saved files (`manifest`), ScaNN `tuning`, and `search`
of a trained workdir (`cli`: what launch.py's --mode=index and --query_image do)."""
