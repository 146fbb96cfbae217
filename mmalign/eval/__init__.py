"""Evaluation: metrics computed from embeddings, with no training or file I/O."""
