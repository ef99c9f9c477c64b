"""Tabular datasets: one loader, ``load_table``, for a scikit-learn set (bundled, ``load_*``, or
downloaded, ``fetch_*``) or a CSV / UCI-style text file with a named target column, so a new set is
one YAML file. Digits, Diabetes, California Housing and UCI Communities and Crime are such files."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from sklearn import datasets

from adalfl.config import ConfigError
from adalfl.data.base import Data
from adalfl.data.files import dataset_folder, fetch
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
        raise ConfigError(f"dataset {cfg.name} has no official test split; set dataset.test_fraction")
    x = np.asarray(x, dtype=np.float64)
    if not impute and np.isnan(x).any():
        raise ValueError(f"dataset {cfg.name} has missing feature values: set dataset.max_missing to impute them")
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


def load_table(cfg: DictConfig) -> Data:
    """One table from ``dataset.source`` (a scikit-learn function) or ``dataset.file`` (a text file),
    split and standardised by ``from_arrays``.

    ``dataset.max_missing`` (a fraction): feature columns missing in more than that fraction of the
    rows are dropped and the remaining gaps filled with the training mean; null: no value may be missing.
    """
    if (cfg.source is None) == (cfg.file is None):
        raise ConfigError(
            f"dataset {cfg.name}: set exactly one of dataset.source (a scikit-learn load_*/fetch_* function) "
            "and dataset.file (a CSV or UCI text file)"
        )
    if cfg.max_missing is not None and not 0 <= cfg.max_missing <= 1:
        raise ConfigError(f"dataset.max_missing is a fraction of the rows, in [0, 1]; got {cfg.max_missing!r}")
    x, y = read_file(cfg) if cfg.file is not None else read_sklearn(cfg)
    if cfg.max_missing is None:
        return from_arrays(x, y, cfg)
    mostly_missing = np.isnan(x).mean(axis=0) > cfg.max_missing
    return from_arrays(x[:, ~mostly_missing], y, cfg, impute=True)


SKLEARN_KINDS = ("load_", "fetch_")


def read_sklearn(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """(features, target) of a scikit-learn set: ``load_*`` ships with scikit-learn; ``fetch_*``
    is cached in <root>/<folder> (scikit-learn's ``data_home``) and downloaded with dataset.download=true."""
    name = str(cfg.source)
    function = getattr(datasets, name, None)
    if not name.startswith(SKLEARN_KINDS) or not callable(function):
        raise ConfigError(
            f"dataset.source: sklearn.datasets has no load_* or fetch_* function {name!r} "
            "(e.g. load_digits, load_diabetes, fetch_california_housing)"
        )
    args: dict[str, Any] = dict(cfg.source_args)
    if name.startswith("load_"):
        bunch = function(**args)
    else:
        home = dataset_folder(cfg)
        bunch = fetch(
            cfg,
            str(cfg.title or cfg.name),
            home,
            lambda download: function(data_home=str(home), download_if_missing=download, **args),
            library="scikit-learn",
            missing=f"scikit-learn's {name} found no cached copy",
        )
    return np.asarray(bunch.data), np.asarray(bunch.target)


# Cells that stand for a missing value: empty, UCI's '?', and the usual spellings.
MISSING_CELLS = ("", "?", "NA", "NaN", "nan")


def read_file(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """(features, target) of a comma-separated text file <root>/<folder>/<file>, downloaded from
    ``dataset.url`` with dataset.download=true. Column names come from its header row, or from
    ``dataset.columns`` for a file without one (UCI's ``*.data``); ``dataset.target`` is the target
    column, ``dataset.drop`` the columns that are not features; the rest must be numbers or missing."""
    folder = dataset_folder(cfg)
    path = folder / str(cfg.file)
    url = cfg.url

    def download(get: bool) -> None:
        if get and url and not path.is_file():
            from torchvision.datasets import utils  # looked up at call time: tests stand in for the network

            utils.download_url(str(url), str(path.parent), path.name)
        if not path.is_file():
            raise FileNotFoundError(f"no {path.name}")

    how = None if url else f"copy {path.name} there (the config has no dataset.url to fetch it from)"
    fetch(cfg, str(cfg.title or path.name), folder, download, library="download", missing=f"no {path.name}", how=how)
    names, rows = read_rows(path, list(cfg.columns) if cfg.columns is not None else None)
    return table_columns(cfg, path, names, rows)


def read_rows(path: Path, columns: list[str] | None) -> tuple[list[str], list[list[str]]]:
    """The column names and the rows of a comma-separated file; every row must have every column."""
    with open(path, newline="") as f:
        rows = [[cell.strip() for cell in row] for row in csv.reader(f) if row]
    names = columns if columns is not None else (rows.pop(0) if rows else [])
    first_row = 1 if columns is not None else 2  # line numbers in messages count the header
    for number, row in enumerate(rows, start=first_row):
        if len(row) != len(names):
            raise ValueError(f"{path}:{number}: {len(row)} columns, expected {len(names)}")
    return names, rows


def table_columns(
    cfg: DictConfig, path: Path, names: list[str], rows: list[list[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Features (NaN where missing) and target of a parsed file, by the config's column names."""
    unknown = [c for c in [cfg.target, *cfg.drop] if c not in names]
    if cfg.target is None or unknown:
        what = "dataset.target is not set" if cfg.target is None else f"no column {unknown}"
        raise ConfigError(
            f"dataset {cfg.name}: {what} in {path} (its columns: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''})"
        )
    target = names.index(cfg.target)
    features = [i for i, name in enumerate(names) if i != target and name not in set(cfg.drop)]
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    for r, row in enumerate(rows):
        for j, i in enumerate(features):
            cell = row[i]
            try:
                x[r, j] = np.nan if cell in MISSING_CELLS else float(cell)
            except ValueError:
                raise ConfigError(
                    f"dataset {cfg.name}: column {names[i]!r} of {path} holds {cell!r}, not a number: "
                    "add it to dataset.drop"
                ) from None
    cells = [row[target] for row in rows]
    if any(cell in MISSING_CELLS for cell in cells):
        raise ValueError(f"{path}: the target {cfg.target} has missing values")
    return x, target_values(cfg, cells)


def target_values(cfg: DictConfig, cells: list[str]) -> np.ndarray:
    """Regression: numbers. Classification: integer labels as they are, other labels (names)
    numbered in sorted order."""
    if cfg.task == "regression":
        return np.asarray([float(c) for c in cells], dtype=np.float64)
    try:
        return np.asarray([int(c) for c in cells], dtype=np.int64)
    except ValueError:
        _, index = np.unique(np.asarray(cells), return_inverse=True)
        return index.astype(np.int64)
