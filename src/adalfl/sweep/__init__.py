"""Sweep plumbing: folder naming, Hydra callbacks, and the report that builds the paper's tables."""
