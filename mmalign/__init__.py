"""mmalign: multimodal alignment by similarity search, in JAX."""

__version__ = "0.1.0"
