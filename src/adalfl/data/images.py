"""Image datasets read through torchvision (MNIST, Fashion-MNIST, KMNIST, CIFAR-10, CIFAR-100, SVHN).

Each set is small enough to live on the device as uint8 (CIFAR-10's training part is 150 MB):
``Data.transform`` turns a batch into normalised floats and, while training, augments it on the
device in one vectorised pass. That avoids a DataLoader's worker processes and host-to-device
copies, which would cost more than a LeNet-5 step.

Protocol: the official train/test partitions; 10% of the training part, stratified by class,
held out for validation (seed ``split_seed``); per-channel mean/std computed on the training part only.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision import datasets

from adalfl.data.base import Data, Split
from adalfl.data.files import data_root, not_found
from adalfl.data.splits import holdout

AUGMENTATIONS = ("crop", "flip")
CROP_PADDING = 4


class ImageTransform:
    """uint8 (N, C, H, W) batch -> normalised float batch, augmented when training.

    ``crop``: pad by 4 zero pixels on each side (black, as torchvision's RandomCrop does before
    normalisation) and cut a random HxW window per image. ``flip``: mirror each image left-right
    with probability 1/2. Random draws use the device's global generator, seeded by the job seed.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: Sequence[str] = ()) -> None:
        unknown = sorted(set(augment) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"dataset.augment: unknown {unknown}; choose from {list(AUGMENTATIONS)}")
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add on the raw values
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.crop = "crop" in augment
        self.flip = "flip" in augment

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        x = x.float()
        if training and (self.crop or self.flip):
            x = random_crop_flip(x, CROP_PADDING if self.crop else 0, self.flip)
        return torch.addcmul(self.shift.to(x.device), x, self.scale.to(x.device))


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """A random HxW window of each zero-padded image, mirrored with probability 1/2 if ``flip``.

    All images at once with two gathers (rows, then columns); the mirror is folded into the
    column indices, so it costs nothing extra. About twice as fast on a CPU as one 4-D index.
    """
    n, c, h, w = x.shape
    device = x.device
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=device)
        rows = top + torch.arange(h, device=device).view(1, 1, h, 1)
        x = x.gather(2, rows.expand(n, c, h, w + 2 * padding))
    cols = torch.arange(w, device=device).view(1, 1, 1, w).expand(n, 1, 1, w)
    if flip:
        mirrored = torch.rand(n, 1, 1, 1, device=device) < 0.5
        cols = torch.where(mirrored, w - 1 - cols, cols)
    if padding > 0:
        cols = cols + torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=device)
    return x.gather(3, cols.expand(n, c, h, w))


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1], in chunks to bound memory."""
    total = np.zeros(x.shape[1])
    total_sq = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        total_sq += (part**2).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def from_images(
    cfg: DictConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    source: str,
) -> Data:
    """Build Data from uint8 (N, C, H, W) images: stratified validation holdout, train statistics."""
    shape = tuple(x_train.shape[1:])
    if shape != tuple(cfg.input_shape):
        raise ValueError(f"{cfg.name}: images are {list(shape)}, config says input_shape {list(cfg.input_shape)}")
    labels = np.unique(np.concatenate([y_train, y_test]))
    if labels.min() < 0 or labels.max() >= cfg.num_outputs:
        raise ValueError(f"{cfg.name}: labels span {labels.min()}..{labels.max()}, num_outputs is {cfg.num_outputs}")
    keep, held, _, _ = holdout(np.arange(len(y_train)), y_train, cfg.val_fraction, cfg.split_seed, stratify=True)
    keep.sort()
    held.sort()
    train = Split(torch.from_numpy(np.ascontiguousarray(x_train[keep])), torch.from_numpy(y_train[keep]).long())
    val = Split(torch.from_numpy(np.ascontiguousarray(x_train[held])), torch.from_numpy(y_train[held]).long())
    test = Split(torch.from_numpy(np.ascontiguousarray(x_test)), torch.from_numpy(np.asarray(y_test)).long())
    mean, std = channel_stats(train.x.numpy())
    return Data(
        task="classification",
        num_outputs=int(cfg.num_outputs),
        train=train,
        val=val,
        test=test,
        transform=ImageTransform(mean, std, list(cfg.augment)),
        info={"source": source, "mean": mean, "std": std, "augment": list(cfg.augment)},
    )


def _open(cfg: DictConfig, title: str, folder: str, make: Callable[[str, bool], object]) -> tuple[object, object]:
    """Open the train and test parts with torchvision, turning its errors into DataNotFoundError."""
    root = data_root(cfg)
    try:
        train = make(str(root), True)
        test = make(str(root), False)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found or corrupted"; urllib: offline
        reason = f"download failed: {err}" if cfg.download else "torchvision found no complete, uncorrupted copy"
        raise not_found(cfg, title, root / folder, reason) from err
    except (AssertionError, ValueError, EOFError, IndexError) as err:
        # A file that exists but does not parse (torchvision's idx reader asserts on its header,
        # often with an empty message): the same clear data error as a missing file.
        detail = f"{type(err).__name__}{': ' + str(err) if str(err) else ''}"
        raise not_found(cfg, title, root / folder, f"torchvision could not parse its files ({detail}): "
                        "damaged or of another format; delete them and fetch again") from err
    return train, test


IDX_CLASSES = ("MNIST", "FashionMNIST", "KMNIST")


def load_idx(cfg: DictConfig) -> Data:
    """An MNIST-format set (``dataset.source``: MNIST, FashionMNIST or KMNIST; 60000 train / 10000
    test 28x28 grey images) from <root>/<source>/raw, as torchvision lays it out.

    Gzipped idx files found there (``*-ubyte.gz``, as distributions ship them, e.g. Debian's
    ``dataset-fashion-mnist``) are unpacked next to themselves first: torchvision reads only the
    unpacked files and would otherwise try to download them."""
    source = str(cfg.source or "MNIST")
    if source not in IDX_CLASSES:
        raise ValueError(f"dataset.source for an idx-format set must be one of {list(IDX_CLASSES)}, got {source!r}")
    cls = getattr(datasets, source)
    _unpack_gzipped_idx(data_root(cfg) / source / "raw")
    train, test = _open(
        cfg, source, f"{source}/raw", lambda root, part: cls(root, train=part, download=cfg.download)
    )
    x_train = train.data.numpy()[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
    x_test = test.data.numpy()[:, None]
    return from_images(cfg, x_train, train.targets.numpy(), x_test, test.targets.numpy(), f"torchvision {source}")


def _unpack_gzipped_idx(folder: Path) -> None:
    if not folder.is_dir():
        return
    for packed in folder.glob("*-ubyte.gz"):
        unpacked = packed.with_suffix("")
        if not unpacked.exists():
            partial = unpacked.with_name(unpacked.name + ".partial")
            with gzip.open(packed, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(unpacked)  # atomic: a killed job never leaves half a file behind


def _cifar(cfg: DictConfig, cls: type, title: str) -> Data:
    train, test = _open(
        cfg, title, cls.base_folder, lambda root, part: cls(root, train=part, download=cfg.download)
    )
    y_train, y_test = np.asarray(train.targets, dtype=np.int64), np.asarray(test.targets, dtype=np.int64)
    # torchvision keeps CIFAR images as (N, H, W, C)
    x_train = np.ascontiguousarray(train.data.transpose(0, 3, 1, 2))
    x_test = np.ascontiguousarray(test.data.transpose(0, 3, 1, 2))
    return from_images(cfg, x_train, y_train, x_test, y_test, f"torchvision {cls.__name__}")


def load_cifar10(cfg: DictConfig) -> Data:
    """CIFAR-10: 50000 train / 10000 test 32x32 colour images, from <root>/cifar-10-batches-py."""
    return _cifar(cfg, datasets.CIFAR10, "CIFAR-10")


def load_cifar100(cfg: DictConfig) -> Data:
    """CIFAR-100 (fine labels): 50000 train / 10000 test, from <root>/cifar-100-python."""
    return _cifar(cfg, datasets.CIFAR100, "CIFAR-100")


SVHN_FOLDER = "svhn"


def load_svhn(cfg: DictConfig) -> Data:
    """SVHN cropped digits: 73257 train / 26032 test, from <root>/svhn/{train,test}_32x32.mat.

    The 531131-image "extra" part is not used. torchvision maps the files' label 10 to digit 0.
    """
    train, test = _open(
        cfg,
        "SVHN",
        SVHN_FOLDER,
        lambda root, part: datasets.SVHN(
            f"{root}/{SVHN_FOLDER}", split="train" if part else "test", download=cfg.download
        ),
    )
    return from_images(cfg, train.data, train.labels, test.data, test.labels, "torchvision SVHN")
