"""Tabular datasets: scikit-learn's bundled sets, California Housing (scikit-learn's fetcher) and
UCI Communities and Crime (the repository's raw ``communities.data``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from sklearn import datasets

from adalfl.data.base import Data
from adalfl.data.files import data_root, not_found
from adalfl.data.splits import holdout, standardise, to_split


def from_arrays(x: np.ndarray, y: np.ndarray, cfg: DictConfig, impute: bool = False) -> Data:
    """Build a Data from one unsplit table, following the protocol.

    Test: a fixed random ``cfg.test_fraction`` of the rows (seed ``cfg.split_seed``).
    Validation: ``cfg.val_fraction`` of what is left. Stratified for classification.
    Features, and regression targets, are standardised with the training part's statistics.
    ``impute``: NaN features are filled with the training part's column mean (so they become 0
    after standardisation) -- after the split, so no test value leaks into the training data.
    """
    classification = cfg.task == "classification"
    if cfg.test_fraction is None:
        raise ValueError(f"dataset {cfg.name} has no official test split; set dataset.test_fraction")
    x = np.asarray(x, dtype=np.float64)
    if not impute and np.isnan(x).any():
        raise ValueError(f"dataset {cfg.name} has missing feature values and its loader does not impute them")
    x_rest, x_test, y_rest, y_test = holdout(x, y, cfg.test_fraction, cfg.split_seed, classification)
    x_train, x_val, y_train, y_val = holdout(x_rest, y_rest, cfg.val_fraction, cfg.split_seed, classification)
    if impute:
        fill = np.nan_to_num(np.nanmean(x_train, axis=0))  # a column missing in all training rows -> 0
        x_train, x_val, x_test = (np.where(np.isnan(a), fill, a) for a in (x_train, x_val, x_test))
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


SKLEARN_FOLDER = "scikit_learn_data"  # the folder name scikit-learn itself uses under the home directory


def load_california_housing(cfg: DictConfig) -> Data:
    """California Housing (20640 block groups, 8 features, median house value) via scikit-learn.

    scikit-learn caches it as ``<data_home>/cal_housing_py3.pkz``; data_home is <root>/scikit_learn_data.
    """
    home = data_root(cfg) / SKLEARN_FOLDER
    try:
        bunch = datasets.fetch_california_housing(data_home=str(home), download_if_missing=bool(cfg.download))
    except OSError as err:  # scikit-learn: "Data not found and `download_if_missing` is False"; or offline
        reason = f"download failed: {err}" if cfg.download else "no cal_housing_py3.pkz"
        raise not_found(cfg, "California Housing", home, reason) from err
    return from_arrays(bunch.data, bunch.target, cfg)


COMMUNITIES_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/communities/communities.data"
COMMUNITIES_FOLDER = "communities"
COMMUNITIES_COLUMNS = 128  # 5 non-predictive, 122 predictive, 1 target
COMMUNITIES_NON_PREDICTIVE = 5  # state, county, community, communityname, fold
MAX_MISSING_FRACTION = 0.5


def read_communities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the raw UCI file: comma-separated, no header, '?' for a missing value.

    Returns (features with NaN for '?', ViolentCrimesPerPop). The 5 non-predictive columns are dropped.
    """
    rows = []
    with open(path, newline="") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != COMMUNITIES_COLUMNS:
                raise ValueError(f"{path}:{number}: {len(row)} columns, expected {COMMUNITIES_COLUMNS}")
            values = row[COMMUNITIES_NON_PREDICTIVE:]
            rows.append([np.nan if v.strip() == "?" else float(v) for v in values])
    table = np.asarray(rows, dtype=np.float64)
    if np.isnan(table[:, -1]).any():
        raise ValueError(f"{path}: the target ViolentCrimesPerPop has missing values")
    return table[:, :-1], table[:, -1]


def load_communities_crime(cfg: DictConfig) -> Data:
    """UCI Communities and Crime (1994 communities): regression of ViolentCrimesPerPop.

    Missing values: a feature missing in more than half of the rows (the 22 LEMAS police-survey
    columns, missing for 1675 communities) is dropped, leaving 100 features; the remaining gaps
    (one value of OtherPerCap) are filled with the training part's column mean (``from_arrays``).
    """
    folder = data_root(cfg) / COMMUNITIES_FOLDER
    path = folder / "communities.data"
    if not path.is_file() and cfg.download:
        from torchvision.datasets.utils import download_url

        try:
            download_url(COMMUNITIES_URL, str(folder), "communities.data")
        except (OSError, RuntimeError) as err:
            raise not_found(cfg, "Communities and Crime", folder, f"download failed: {err}") from err
    if not path.is_file():
        raise not_found(
            cfg,
            "Communities and Crime",
            folder,
            "no communities.data",
            f"fetch it with:  python main.py dataset={cfg.name} dataset.root={data_root(cfg)} dataset.download=true"
            f"  or download {COMMUNITIES_URL} to {path}",
        )
    x, y = read_communities(path)
    mostly_missing = np.isnan(x).mean(axis=0) > MAX_MISSING_FRACTION
    return from_arrays(x[:, ~mostly_missing], y, cfg, impute=True)
