"""Retrieval over embedding galleries: approximate indexes and what they return."""
