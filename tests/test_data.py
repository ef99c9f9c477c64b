"""The offline tabular datasets follow the protocol; batches come from reshuffled epochs."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn import datasets

from adalfl.data import BatchSampler, Split, load_data

from helpers import compose_config


def _load(name: str):
    return load_data(compose_config(f"dataset={name}").dataset, torch.device("cpu"))


def test_digits_split_sizes_stratification_and_standardisation() -> None:
    data = _load("digits")
    n = len(datasets.load_digits().target)
    assert len(data.train) + len(data.val) + len(data.test) == n
    assert len(data.test) == math.ceil(0.2 * n)  # scikit-learn rounds the test share up
    assert abs(len(data.val) - 0.1 * (n - len(data.test))) <= 1
    for split in (data.train, data.val, data.test):
        assert split.y.min() >= 0 and split.y.max() <= 9
    # stratified: every class's share of the validation set is within one example of its train share
    train_share = torch.bincount(data.train.y, minlength=10).double() / len(data.train)
    val_counts = torch.bincount(data.val.y, minlength=10).double()
    assert torch.all((val_counts - train_share * len(data.val)).abs() <= 1.0)
    # standardised with the training part only: train columns have mean 0, val/test do not exactly
    assert data.train.x.mean(0).abs().max() < 1e-5
    varying = data.train.x.std(0) > 0
    assert torch.allclose(data.train.x.std(0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=1e-4)
    assert data.test.x.mean(0).abs().max() > 1e-3


def test_diabetes_target_is_standardised_on_training_statistics() -> None:
    data = _load("diabetes")
    assert data.task == "regression"
    assert data.train.y.shape[1] == 1 and data.train.y.dtype == torch.float32
    assert abs(float(data.train.y.mean())) < 1e-5
    assert abs(float(data.train.y.std(unbiased=False)) - 1) < 1e-4
    # the fixed split is the same on every load
    assert torch.equal(_load("diabetes").test.x, data.test.x)


def test_split_seed_changes_the_partition() -> None:
    a = load_data(compose_config("dataset=diabetes").dataset, torch.device("cpu"))
    b = load_data(compose_config("dataset=diabetes", "dataset.split_seed=1").dataset, torch.device("cpu"))
    assert not torch.equal(a.test.y, b.test.y)


def test_sampler_visits_every_example_once_per_epoch_and_reshuffles() -> None:
    split = Split(torch.arange(10).float().unsqueeze(1), torch.arange(10))
    sampler = BatchSampler(split, batch_size=3, seed=0)
    epoch1 = torch.cat([sampler.next().y for _ in range(3)])  # 9 of 10, tail dropped
    epoch2 = torch.cat([sampler.next().y for _ in range(3)])
    assert len(set(epoch1.tolist())) == 9 and len(set(epoch2.tolist())) == 9
    assert not torch.equal(epoch1, epoch2)


def test_sampler_state_round_trip_continues_the_same_stream() -> None:
    split = Split(torch.randn(50, 2), torch.arange(50))
    a = BatchSampler(split, batch_size=8, seed=3)
    for _ in range(4):
        a.next()
    b = BatchSampler(split, batch_size=8, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        assert torch.equal(a.next().y, b.next().y)


def test_batch_larger_than_split_is_the_whole_split() -> None:
    split = Split(torch.randn(5, 2), torch.arange(5))
    batch = BatchSampler(split, batch_size=128, seed=0).next()
    assert sorted(batch.y.tolist()) == [0, 1, 2, 3, 4]
    assert np.isfinite(batch.x.numpy()).all()
