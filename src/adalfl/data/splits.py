"""Train/validation/test partitioning and standardisation shared by every loader."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from adalfl.data.base import Split


def holdout(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off ``fraction`` of the rows (stratified by label for classification).

    Returns (x_keep, x_out, y_keep, y_out); deterministic in ``seed``.
    """
    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y if stratify else None)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every array by the training array's per-column mean and std (std 0 is left at 1)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def to_split(x: np.ndarray, y: np.ndarray, task: str) -> Split:
    if task == "classification":
        return Split(torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long))
    y = np.asarray(y, dtype=np.float32)
    return Split(torch.as_tensor(x), torch.as_tensor(y.reshape(len(y), -1)))
