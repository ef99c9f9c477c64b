"""Datasets as device-resident tensors, their splits, and index-based batch sampling."""

from adalfl.data.base import Batch, Data, Split, load_data
from adalfl.data.sampler import BatchSampler

__all__ = ["Batch", "BatchSampler", "Data", "Split", "load_data"]
