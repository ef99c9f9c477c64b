"""Every loader reads tiny files written in its real on-disk format through the real library
code (torchvision's dataset classes, scikit-learn's fetcher, the UCI text parser), and follows
the protocol: official partitions, stratified 10% validation, normalisation, augmentation.
Missing data fails at once with the folder and the fetch command."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import scipy.io
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torchvision import datasets

from adalfl.app import run
from adalfl.config import validate
from adalfl.configstore import register_configs
from adalfl.data import DataNotFoundError, load_data
from adalfl.data.images import ImageTransform, random_crop_flip
from adalfl.config import ConfigError
from adalfl.data.tabular import read_rows
from adalfl.sweep.resolvers import register_resolvers

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
CPU = torch.device("cpu")
ON_DISK = ["mnist", "kmnist", "cifar10", "cifar100", "svhn", "california_housing", "communities_crime"]

register_configs()
register_resolvers()


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def dataset_cfg(name: str, root: Path, *overrides: str) -> DictConfig:
    return compose_config(f"dataset={name}", f"dataset.root={root}", *overrides).dataset


def images(n: int, c: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def balanced_labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % classes)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- writers (real formats)


def write_mnist(
    root: Path,
    n_train: int = 100,
    n_test: int = 20,
    source: str = "MNIST",
    gzipped: bool = False,
    prefixes: tuple[str, str] = ("train", "t10k"),
    classes: int = 10,
) -> dict[str, np.ndarray]:
    """idx-ubyte files (big-endian magic 2051/2049 and sizes) in <root>/<source>/raw, as torchvision
    reads them; ``gzipped``: only the ``*-ubyte.gz`` files, as distributions ship them. ``prefixes``
    name the train and test files (EMNIST: emnist-<split>-train, emnist-<split>-test)."""
    raw = root / source / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n, seed in ((prefixes[0], n_train, 0), (prefixes[1], n_test, 1)):
        x = images(n, 1, 28, 28, seed)[:, 0]
        y = balanced_labels(n, classes, seed).astype(np.uint8)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + y.tobytes(),
        }
        for name, content in files.items():
            if gzipped:
                (raw / f"{name}.gz").write_bytes(gzip.compress(content))
            else:
                (raw / name).write_bytes(content)
        arrays["train" if prefix == prefixes[0] else "t10k"] = (x, y)
    return arrays


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 20, n_test: int = 20) -> dict:
    """cifar-10-batches-py: five training pickles, test_batch and batches.meta, rows of 3072 bytes
    (R, G, B planes). torchvision checks each file's md5: the class lists are pointed at ours."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    train_list = []
    for i in range(1, 6):
        x = images(per_batch, 3, 32, 32, i)
        y = balanced_labels(per_batch, 10, i)
        _pickle(
            folder / f"data_batch_{i}",
            {"batch_label": f"batch {i}", "data": x.reshape(per_batch, -1), "labels": y.tolist()},
        )
        train_list.append([f"data_batch_{i}", md5(folder / f"data_batch_{i}")])
        written[f"data_batch_{i}"] = (x, y)
    x = images(n_test, 3, 32, 32, 9)
    y = balanced_labels(n_test, 10, 9)
    _pickle(folder / "test_batch", {"batch_label": "test", "data": x.reshape(n_test, -1), "labels": y.tolist()})
    written["test_batch"] = (x, y)
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(
        datasets.CIFAR10,
        "meta",
        {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")},
    )
    return written


def write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 1000, n_test: int = 100) -> dict:
    """cifar-100-python/{train,test,meta} pickles with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x = images(n, 3, 32, 32, seed)
        fine = balanced_labels(n, 100, seed)
        _pickle(
            folder / name,
            {"data": x.reshape(n, -1), "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()},
        )
        written[name] = (x, fine)
    _pickle(
        folder / "meta",
        {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]},
    )
    monkeypatch.setattr(datasets.CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(datasets.CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(
        datasets.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": md5(folder / "meta")}
    )
    return written


def write_svhn(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 100, n_test: int = 30) -> dict:
    """<root>/svhn/{train,test}_32x32.mat: X is (32, 32, 3, N) uint8, y is (N, 1) with digit 0 stored as 10."""
    folder = root / "svhn"
    folder.mkdir(parents=True)
    written = {}
    split_list = dict(datasets.SVHN.split_list)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x = images(n, 3, 32, 32, seed)
        digits = balanced_labels(n, 10, seed)
        stored = np.where(digits == 0, 10, digits).reshape(n, 1).astype(np.uint8)
        path = folder / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": x.transpose(2, 3, 1, 0), "y": stored})
        split_list[split] = [split_list[split][0], path.name, md5(path)]
        written[split] = (x, digits)
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)
    return written


def write_california(root: Path, n: int = 50) -> np.ndarray:
    """scikit-learn's cache: joblib dump of the (N, 9) table [value, income, age, rooms, bedrooms,
    population, households, latitude, longitude] at <data_home>/cal_housing_py3.pkz."""
    rng = np.random.default_rng(0)
    table = np.column_stack(
        [
            rng.uniform(1e4, 5e5, n),
            rng.uniform(0.5, 15, n),
            rng.integers(1, 52, n),
            rng.integers(100, 5000, n),
            rng.integers(20, 1000, n),
            rng.integers(100, 5000, n),
            rng.integers(50, 1500, n),
            rng.uniform(32, 42, n),
            rng.uniform(-124, -114, n),
        ]
    ).astype(np.float64)
    home = root / "scikit_learn_data"
    home.mkdir(parents=True)
    joblib.dump(table, home / "cal_housing_py3.pkz", compress=6)
    return table


def write_communities(root: Path, n: int = 60) -> np.ndarray:
    """The raw UCI text file: 128 comma-separated columns, no header, '?' for missing values;
    columns 5..26 of the predictive block mostly missing (like the LEMAS columns), one more
    column with a single gap, the target last."""
    rng = np.random.default_rng(0)
    values = np.round(rng.uniform(0, 1, size=(n, 123)), 2)  # 122 predictive + target
    lines = []
    for i in range(n):
        fields = [str(rng.integers(1, 57)), "?" if i % 3 else str(i), "?", f"Town{i}city", str(i % 10 + 1)]
        row = [f"{v:.2f}" for v in values[i]]
        for col in range(5, 27):  # 22 columns missing in 2 of every 3 rows
            if i % 3:
                row[col] = "?"
        if i == 7:
            row[40] = "?"
        lines.append(",".join(fields + row))
    folder = root / "communities"
    folder.mkdir(parents=True)
    (folder / "communities.data").write_text("\n".join(lines) + "\n")
    return values


# ----------------------------------------------------------------------------- loaders


def _assert_stratified_holdout(data, n_train_file: int, classes: int) -> None:
    n_val = int(np.ceil(0.1 * n_train_file))
    assert len(data.val) == n_val and len(data.train) == n_train_file - n_val
    counts = torch.bincount(data.val.y, minlength=classes)
    assert counts.max() - counts.min() <= 1, f"validation holdout not stratified: {counts.tolist()}"


def _assert_normalised(data) -> None:
    x = data.prepare(data.train.x, training=False)
    assert x.dtype == torch.float32
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-3), mean
    assert torch.allclose(std, torch.ones_like(std), atol=1e-2), std


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(row) for row in x.reshape(len(x), -1).numpy()}


def test_mnist_reads_idx_files(tmp_path: Path) -> None:
    written = write_mnist(tmp_path)
    data = load_data(dataset_cfg("mnist", tmp_path), CPU)
    _assert_stratified_holdout(data, 100, 10)
    assert len(data.test) == 20
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (1, 28, 28)
    assert data.train.y.dtype == torch.long
    x_test, y_test = written["t10k"]
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(x_test))  # the official test part, untouched
    assert torch.equal(data.test.y, torch.from_numpy(y_test).long())
    x_train, _ = written["train"]
    assert _rows(data.train.x) | _rows(data.val.x) == _rows(torch.from_numpy(x_train))
    assert not _rows(data.train.x) & _rows(data.val.x)
    _assert_normalised(data)
    # No augmentation on MNIST: a training batch is the evaluation batch.
    assert torch.equal(data.prepare(data.train.x[:8], True), data.prepare(data.train.x[:8], False))


def test_fashion_mnist_reads_gzipped_idx_files(tmp_path: Path) -> None:
    """Debian's dataset-fashion-mnist ships only *-ubyte.gz: copied into <root>/FashionMNIST/raw,
    they are unpacked on first use and read through torchvision's FashionMNIST."""
    written = write_mnist(tmp_path, n_train=200, n_test=30, source="FashionMNIST", gzipped=True)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert not list(raw.glob("*-ubyte"))  # only the packed files to start with
    cfg = dataset_cfg("fashion_mnist", tmp_path)
    assert cfg.source == "FashionMNIST" and not cfg.download
    data = load_data(cfg, CPU)
    _assert_stratified_holdout(data, 200, 10)
    x_test, y_test = written["t10k"]
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(x_test))
    assert torch.equal(data.test.y, torch.from_numpy(y_test).long())
    x_train, _ = written["train"]
    assert _rows(data.train.x) | _rows(data.val.x) == _rows(torch.from_numpy(x_train))
    assert data.info["source"] == "torchvision FashionMNIST"
    _assert_normalised(data)
    assert sorted(p.name for p in raw.glob("*-ubyte")) == sorted(p.name[:-3] for p in raw.glob("*.gz"))
    assert not list(raw.glob("*.partial"))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("random bytes", r"could not parse its files \(AssertionError\)"),
        ("truncated", "found no complete, uncorrupted copy"),
    ],
)
def test_mnist_files_torchvision_cannot_parse_are_a_data_error(damage: str, reason: str, tmp_path: Path) -> None:
    """torchvision's idx reader asserts (often with an empty message) on a damaged file: that becomes
    the same one-line data error as a missing file, naming the folder and the way out."""
    write_mnist(tmp_path)
    images_file = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = images_file.read_bytes()
    images_file.write_bytes(np.random.default_rng(0).bytes(5000) if damage == "random bytes" else data[:1000])
    with pytest.raises(DataNotFoundError, match=rf"MNIST not found in {tmp_path}/MNIST/raw \(torchvision {reason}"):
        load_data(dataset_cfg("mnist", tmp_path), CPU)


def test_mnist_download_flag_reaches_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(self) -> None:  # stands in for the network: writes what the mirror would
        calls.append(self.raw_folder)
        if not (tmp_path / "MNIST").exists():
            write_mnist(tmp_path)

    monkeypatch.setattr(datasets.MNIST, "download", fake_download)
    data = load_data(dataset_cfg("mnist", tmp_path, "dataset.download=true"), CPU)
    assert calls and len(data.test) == 20


def test_cifar10_reads_python_pickles_and_augments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar10(tmp_path, monkeypatch)
    data = load_data(dataset_cfg("cifar10", tmp_path), CPU)
    _assert_stratified_holdout(data, 100, 10)
    x_test, y_test = written["test_batch"]
    assert torch.equal(data.test.x, torch.from_numpy(x_test))  # (N, C, H, W) restored from torchvision's NHWC
    assert torch.equal(data.test.y, torch.from_numpy(y_test))
    assert int(data.train.y.max()) == 9 and int(data.train.y.min()) == 0
    _assert_normalised(data)
    torch.manual_seed(0)
    batch = data.train.x[:32]
    augmented = data.prepare(batch, training=True)
    assert augmented.shape == batch.shape and augmented.dtype == torch.float32
    assert not torch.equal(augmented, data.prepare(batch, training=False))


def test_cifar100_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar100(tmp_path, monkeypatch)
    data = load_data(dataset_cfg("cifar100", tmp_path), CPU)
    _assert_stratified_holdout(data, 1000, 100)
    assert torch.bincount(data.val.y, minlength=100).tolist() == [1] * 100
    assert torch.equal(data.test.y, torch.from_numpy(written["test"][1]))
    assert int(data.train.y.max()) == 99


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_svhn(tmp_path, monkeypatch)
    data = load_data(dataset_cfg("svhn", tmp_path), CPU)
    _assert_stratified_holdout(data, 100, 10)
    x_test, digits = written["test"]
    assert torch.equal(data.test.x, torch.from_numpy(x_test))
    assert torch.equal(data.test.y, torch.from_numpy(digits))
    assert int(data.train.y.max()) == 9 and (data.train.y == 0).any()
    assert data.transform.crop and data.transform.flip  # the author's code flips SVHN's training set
    # Evaluation batches (validation and test) are only normalised, never augmented, whatever the
    # random state: the author's code augments SVHN's test set, which this project does not copy.
    mean, std = (torch.tensor(data.info[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert torch.allclose(data.prepare(data.test.x, training=False), (data.test.x / 255 - mean) / std, atol=1e-5)
    torch.manual_seed(0)
    assert not torch.equal(data.prepare(data.train.x, training=True), data.prepare(data.train.x, training=False))


def test_california_housing_reads_sklearn_cache(tmp_path: Path) -> None:
    table = write_california(tmp_path)
    data = load_data(dataset_cfg("california_housing", tmp_path), CPU)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 10)
    assert data.train.x.shape == (36, 8) and data.train.y.shape == (36, 1)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.float32
    assert torch.allclose(data.train.x.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(data.train.y.mean(), torch.zeros(()), atol=1e-5)
    # Standardised targets are an affine map of the file's values (scikit-learn divides by 1e5).
    y_all = torch.cat([data.train.y, data.val.y, data.test.y]).flatten().double()
    raw = torch.from_numpy(np.sort(table[:, 0] / 1e5))
    y_sorted = y_all.sort().values
    slope = (y_sorted[-1] - y_sorted[0]) / (raw[-1] - raw[0])
    assert torch.allclose(y_sorted, y_sorted[0] + slope * (raw - raw[0]), atol=1e-4)


def test_communities_crime_reads_uci_file(tmp_path: Path) -> None:
    values = write_communities(tmp_path)
    data = load_data(dataset_cfg("communities_crime", tmp_path, "dataset.input_shape=[100]"), CPU)
    assert (len(data.train), len(data.val), len(data.test)) == (43, 5, 12)
    assert data.train.x.shape == (43, 100)  # 122 predictive - 22 mostly missing
    for split in (data.train, data.val, data.test):
        assert torch.isfinite(split.x).all() and torch.isfinite(split.y).all()
    y_all = torch.cat([data.train.y, data.val.y, data.test.y]).flatten().double().sort().values
    raw = torch.from_numpy(np.sort(values[:, -1]))  # ViolentCrimesPerPop is the last column
    slope = (y_all[-1] - y_all[0]) / (raw[-1] - raw[0])
    assert torch.allclose(y_all, y_all[0] + slope * (raw - raw[0]), atol=1e-4)


def test_communities_parser_rejects_a_malformed_row(tmp_path: Path) -> None:
    path = tmp_path / "communities.data"
    path.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="3 columns, expected 128"):
        read_rows(path, list(compose_config("dataset=communities_crime").dataset.columns))


def test_communities_download_writes_the_uci_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    source = tmp_path / "source"
    write_communities(source)
    fetched = []

    def fake_download_url(url: str, root: str, filename: str, md5=None) -> None:
        fetched.append(url)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes((source / "communities" / "communities.data").read_bytes())

    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    root = tmp_path / "root"
    data = load_data(dataset_cfg("communities_crime", root, "dataset.download=true"), CPU)
    assert fetched and fetched[0].endswith("communities/communities.data")
    assert len(data.test) == 12


# ----------------------------------------------------------------------------- missing data


@pytest.mark.parametrize("name", ON_DISK)
def test_missing_data_names_the_folder_and_the_fetch_command(name: str, tmp_path: Path) -> None:
    cfg = dataset_cfg(name, tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        load_data(cfg, CPU)
    message = str(info.value)
    assert str(tmp_path) in message
    assert f"python main.py dataset={name} dataset.root={tmp_path} dataset.download=true" in message


def test_main_fails_fast_on_missing_cifar10_and_records_it(tmp_path: Path) -> None:
    empty, job = tmp_path / "empty", tmp_path / "job"
    empty.mkdir()
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "WANDB_SILENT": "true", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "dataset=cifar10",
            f"dataset.root={empty}",
            "logger=none",
            f"hydra.run.dir={job}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "dataset=cifar10" in proc.stderr and "download=true" in proc.stderr
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "failed"
    assert result["error"].startswith("DataNotFoundError") and str(empty / "cifar-10-batches-py") in result["error"]


def test_data_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADALFL_DATA_ROOT", str(tmp_path))
    assert compose_config("dataset=cifar10").dataset.root == str(tmp_path)
    monkeypatch.delenv("ADALFL_DATA_ROOT")
    assert compose_config("dataset=cifar10").dataset.root == "data"


# ----------------------------------------------------------------------------- transforms and configs


@pytest.mark.parametrize("flip", [False, True])
def test_random_crop_cuts_a_window_of_the_padded_image(flip: bool) -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 3, 8, 8)
    out = random_crop_flip(x, 2, flip)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets, mirrors = set(), 0
    for i in range(len(x)):
        found = [
            (t, left, m)
            for t in range(5)
            for left in range(5)
            for m in (False, True)
            if torch.equal(out[i].flip(2) if m else out[i], padded[i, :, t : t + 8, left : left + 8])
        ]
        assert found, f"image {i} is not a (mirrored) window of its padded input"
        offsets.add(found[0][:2])
        mirrors += found[0][2] and not any(not m for *_, m in found)
    assert len(offsets) > 5  # the window differs between images
    assert (mirrors > 4) if flip else (mirrors == 0)


def test_flip_mirrors_about_half_of_the_images() -> None:
    torch.manual_seed(0)
    transform = ImageTransform([0.5], [0.25], ["flip"])
    x = torch.randint(0, 256, (200, 1, 4, 4), dtype=torch.uint8)
    plain, flipped = transform(x, False), transform(x, True)
    mirrored = (flipped == plain.flip(3)).flatten(1).all(1)
    same = (flipped == plain).flatten(1).all(1)
    assert bool((mirrored | same).all())
    assert 60 < int(mirrored.sum()) < 140


def test_unknown_augmentation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        ImageTransform([0.5], [0.5], ["rotate"])


def test_input_shape_mismatch_fails_when_loading(tmp_path: Path) -> None:
    write_communities(tmp_path)
    with pytest.raises(ValueError, match="input_shape"):
        load_data(dataset_cfg("communities_crime", tmp_path, "dataset.input_shape=[99]"), CPU)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")))
def test_every_dataset_config_composes(name: str) -> None:
    cfg = compose_config(f"dataset={name}")
    validate(cfg)
    assert cfg.dataset.name == name
    assert cfg.optimizer.lr == cfg.dataset.lr
    # Every value of every dataset against the protocol: tests/test_protocol.py.
    assert cfg.dataset.lr == 0.01 and cfg.dataset.batch_size == 128


def test_dataset_config_rejects_unknown_keys() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config("dataset=cifar10", "dataset.rooot=/tmp")


# ----------------------------------------------------------------------------- end to end


def _one_step(cfg: DictConfig, out: Path) -> dict:
    with open_dict(cfg):
        cfg.runtime.progress = False
        cfg.dataset.steps = 2
        cfg.dataset.eval_interval = 2
        cfg.dataset.log_interval = 1
        cfg.checkpoint.every = 0
    run(cfg, out)
    return json.loads((out / "result.json").read_text())


def test_app_trains_lenet5_on_mnist_files(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data")
    cfg = compose_config(
        "dataset=mnist",
        f"dataset.root={tmp_path / 'data'}",
        "model=lenet5",
        "method=ce",
        "logger=none",
        "dataset.batch_size=32",
    )  # the fixture's training split is smaller than 128
    result = _one_step(cfg, tmp_path / "job")
    assert result["status"] == "done" and 0.0 <= result["test_metric"] <= 1.0


def test_app_trains_an_mlp_on_communities_file(tmp_path: Path) -> None:
    write_communities(tmp_path / "data")
    cfg = compose_config(
        "dataset=communities_crime",
        f"dataset.root={tmp_path / 'data'}",
        "model=mlp",
        "method=ce",
        "logger=none",
        "dataset.batch_size=32",
    )  # the fixture's training split is smaller than 128
    result = _one_step(cfg, tmp_path / "job")
    assert result["status"] == "done" and np.isfinite(result["test_metric"])


# ----------------------------------------------------------------------------- a new dataset is one YAML


def test_kmnist_reads_its_idx_files(tmp_path: Path) -> None:
    written = write_mnist(tmp_path, source="KMNIST", gzipped=True)
    data = load_data(dataset_cfg("kmnist", tmp_path), CPU)
    _assert_stratified_holdout(data, 100, 10)
    assert data.info["source"] == "torchvision KMNIST"
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(written["t10k"][0]))


EMNIST_YAML = """\
# A set this repository does not ship: EMNIST's 47-class "balanced" split, one YAML, no Python.
defaults:
  - /dataset_schema
  - override /model@_global_.model: lenet5
  - _self_
name: emnist_balanced
loader: adalfl.data.images.load_torchvision
source: EMNIST
source_args: {split: balanced}
task: classification
input_shape: [1, 28, 28]
num_outputs: 47
steps: 4
batch_size: 32
eval_interval: 2
log_interval: 1
lr: 0.01
"""

CSV_YAML = """\
# A CSV with a header row: a named target that is not the last column, an id and a text column dropped.
defaults:
  - /dataset_schema
  - override /model@_global_.model: mlp_small
  - _self_
name: toy_csv
loader: adalfl.data.tabular.load_table
folder: toy
file: toy.csv
target: strength
drop: [id, site]
max_missing: 0.5
task: regression
input_shape: [3]
num_outputs: 1
test_fraction: 0.2
steps: 4
batch_size: 16
eval_interval: 2
log_interval: 1
lr: 0.01
"""


def write_config_dir(tmp_path: Path, name: str, text: str) -> Path:
    """A config folder holding only conf/dataset/<name>.yaml, for Hydra's search path."""
    conf = tmp_path / "extra_conf"
    (conf / "dataset").mkdir(parents=True)
    (conf / "dataset" / f"{name}.yaml").write_text(text)
    return conf


def write_emnist(root: Path) -> None:
    write_mnist(
        root,
        n_train=470,
        n_test=94,
        source="EMNIST",
        gzipped=True,
        prefixes=("emnist-balanced-train", "emnist-balanced-test"),
        classes=47,
    )


def write_toy_csv(root: Path, n: int = 80) -> np.ndarray:
    """toy/toy.csv: header row, columns id, a, site (text), b, strength (target), c; one gap in c."""
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=(n, 4)), 3)  # a, b, c, strength
    lines = ["id,a,site,b,strength,c"]
    for i, (a, b, c, y) in enumerate(values):
        lines.append(f"{i},{a},Site {i % 4},{b},{y},{'' if i == 5 else c}")
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "toy.csv").write_text("\n".join(lines) + "\n")
    return values


def _search_path(conf: Path) -> str:
    return f"hydra.searchpath=[file://{conf}]"


@pytest.mark.parametrize(
    ("name", "text", "write"), [("emnist_balanced", EMNIST_YAML, write_emnist), ("toy_csv", CSV_YAML, write_toy_csv)]
)
def test_a_new_dataset_is_one_yaml_file(name: str, text: str, write, tmp_path: Path) -> None:
    """A dataset YAML in another config folder (on Hydra's search path) and its files in their real
    format: `python main.py dataset=<name>` trains on it, with no Python written."""
    from mainproc import run_main

    conf = write_config_dir(tmp_path, name, text)
    write(tmp_path / "data")
    job = tmp_path / "job"
    proc = run_main(
        [
            _search_path(conf),
            f"dataset={name}",
            f"dataset.root={tmp_path / 'data'}",
            "method=ce",
            "logger=none",
            "runtime.progress=false",
            "checkpoint.every=0",
            f"hydra.run.dir={job}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "done" and result["dataset"] == name
    assert np.isfinite(result["test_metric"])


def test_new_yamls_read_what_they_name(tmp_path: Path) -> None:
    """The two YAMLs above, loaded in-process: EMNIST's split and 47 classes, the CSV's named columns."""
    write_emnist(tmp_path / "data")
    conf = write_config_dir(tmp_path, "emnist_balanced", EMNIST_YAML)
    (conf / "dataset" / "toy_csv.yaml").write_text(CSV_YAML)
    emnist = load_data(
        compose_config(_search_path(conf), "dataset=emnist_balanced", f"dataset.root={tmp_path / 'data'}").dataset, CPU
    )
    assert emnist.info["source"] == "torchvision EMNIST" and int(emnist.train.y.max()) == 46
    _assert_stratified_holdout(emnist, 470, 47)
    values = write_toy_csv(tmp_path / "data")
    table = load_data(
        compose_config(_search_path(conf), "dataset=toy_csv", f"dataset.root={tmp_path / 'data'}").dataset, CPU
    )
    assert (len(table.train), len(table.val), len(table.test)) == (57, 7, 16)
    assert table.train.x.shape == (57, 3) and torch.isfinite(table.train.x).all()  # a, b, c; the gap filled
    y_all = torch.cat([table.train.y, table.val.y, table.test.y]).flatten().double().sort().values
    raw = torch.from_numpy(np.sort(values[:, 3]))  # the target column, wherever it stands
    slope = (y_all[-1] - y_all[0]) / (raw[-1] - raw[0])
    assert torch.allclose(y_all, y_all[0] + slope * (raw - raw[0]), atol=1e-4)


def test_csv_class_names_become_indices(tmp_path: Path) -> None:
    rows = ["x1,x2,kind"] + [f"{i},{i % 7},{['cat', 'dog', 'eel'][i % 3]}" for i in range(60)]
    (tmp_path / "pets.csv").write_text("\n".join(rows) + "\n")
    data = load_data(
        dataset_cfg(
            "communities_crime",
            tmp_path,
            "dataset.folder=''",
            "dataset.file=pets.csv",
            "dataset.columns=null",
            "dataset.target=kind",
            "dataset.drop=[]",
            "dataset.task=classification",
            "dataset.num_outputs=3",
            "dataset.input_shape=[2]",
        ),
        CPU,
    )
    assert sorted(torch.cat([data.train.y, data.val.y, data.test.y]).unique().tolist()) == [0, 1, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset=mnist", "dataset.source=MNST"], "torchvision.datasets has no dataset class 'MNST'"),
        (["dataset=mnist", "dataset.source=utils"], "no dataset class 'utils'"),
        (["dataset=mnist", "dataset.part_arg=split"], "part_arg of torchvision MNIST: .*'split'"),
        (["dataset=mnist", "dataset.part_arg=part"], r"dataset.part_arg must be one of \['train', 'split'\]"),
        (
            ["dataset=digits", "dataset.source=load_digitz"],
            "sklearn.datasets has no load_\\* or fetch_\\* function 'load_digitz'",
        ),
        (["dataset=digits", "dataset.source=null"], "set exactly one of dataset.source"),
        (["dataset=communities_crime", "dataset.target=Crimes"], r"no column \['Crimes'\] in .*communities.data"),
        (["dataset=communities_crime", "dataset.drop=[state, fold, town]"], r"no column \['town'\]"),
        (
            ["dataset=communities_crime", "dataset.drop=[state, county, community, fold]"],
            "column 'communityname' .* holds 'Town0city', not a number: add it to dataset.drop",
        ),
    ],
)
def test_bad_dataset_yaml_values_are_config_errors(
    overrides: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist(tmp_path)
    write_communities(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_data(dataset_cfg(overrides[0].split("=")[1], tmp_path, *overrides[1:]), CPU)


def test_a_file_without_url_says_where_to_put_it(tmp_path: Path) -> None:
    cfg = dataset_cfg("communities_crime", tmp_path, "dataset.url=null")
    with pytest.raises(
        DataNotFoundError,
        match=rf"Communities and Crime not found in {tmp_path}/communities "
        r"\(no communities.data\); copy communities.data there",
    ):
        load_data(cfg, CPU)


def test_an_argument_torchvision_does_not_take_is_a_config_error(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    with pytest.raises(ConfigError, match="source_args .* MNIST: .*'split'"):
        load_data(dataset_cfg("mnist", tmp_path, "+dataset.source_args.split=balanced"), CPU)


def test_gzipped_idx_unpacking_survives_a_second_job_unpacking_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs of a parallel sweep unpack the same files on first use (CI's Fashion-MNIST check once
    failed this way: two jobs shared one temporary file and the second rename found it gone). Here a
    second unpacker runs to completion in the middle of the first one's copy: both must succeed and
    every unpacked file must be whole."""
    from adalfl.data import images as images_module

    write_mnist(tmp_path, n_train=50, n_test=10, source="FashionMNIST", gzipped=True)
    raw = tmp_path / "FashionMNIST" / "raw"
    real_copy = shutil.copyfileobj
    interleaved = []

    def copy_with_a_rival(src, dst, *args):  # type: ignore[no-untyped-def]
        if not interleaved:
            interleaved.append(True)
            images_module.unpack_gzipped_idx(raw)  # the rival job, while this one is mid-copy
        return real_copy(src, dst, *args)

    monkeypatch.setattr(images_module.shutil, "copyfileobj", copy_with_a_rival)
    images_module.unpack_gzipped_idx(raw)
    assert interleaved
    for packed in raw.glob("*.gz"):
        assert packed.with_suffix("").read_bytes() == gzip.decompress(packed.read_bytes())
    assert not list(raw.glob("*.partial"))
