"""Small tabular datasets that ship with scikit-learn (no download needed)."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig
from sklearn import datasets

from adalfl.data.base import Data
from adalfl.data.splits import holdout, standardise, to_split


def from_arrays(x: np.ndarray, y: np.ndarray, cfg: DictConfig) -> Data:
    """Build a Data from one unsplit table, following the protocol.

    Test: a fixed random ``cfg.test_fraction`` of the rows (seed ``cfg.split_seed``).
    Validation: ``cfg.val_fraction`` of what is left. Stratified for classification.
    Features, and regression targets, are standardised with the training part's statistics.
    """
    classification = cfg.task == "classification"
    if cfg.test_fraction is None:
        raise ValueError(f"dataset {cfg.name} has no official test split; set dataset.test_fraction")
    x = np.asarray(x, dtype=np.float64)
    x_rest, x_test, y_rest, y_test = holdout(x, y, cfg.test_fraction, cfg.split_seed, classification)
    x_train, x_val, y_train, y_val = holdout(x_rest, y_rest, cfg.val_fraction, cfg.split_seed, classification)
    x_train, x_val, x_test = standardise(x_train, x_val, x_test)
    if not classification:
        y_train, y_val, y_test = standardise(
            np.asarray(y_train, dtype=np.float64).reshape(len(y_train), -1),
            np.asarray(y_val, dtype=np.float64).reshape(len(y_val), -1),
            np.asarray(y_test, dtype=np.float64).reshape(len(y_test), -1),
        )
    return Data(
        task=cfg.task,
        num_outputs=cfg.num_outputs,
        train=to_split(x_train, y_train, cfg.task),
        val=to_split(x_val, y_val, cfg.task),
        test=to_split(x_test, y_test, cfg.task),
    )


def load_diabetes(cfg: DictConfig) -> Data:
    bunch = datasets.load_diabetes()
    return from_arrays(bunch.data, bunch.target, cfg)


def load_digits(cfg: DictConfig) -> Data:
    bunch = datasets.load_digits()
    return from_arrays(bunch.data, bunch.target, cfg)
