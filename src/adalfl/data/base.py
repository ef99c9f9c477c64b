"""The in-memory form every loader returns, and the one entry point that calls a loader."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple, Optional

import torch
from hydra.utils import get_method
from omegaconf import DictConfig

from adalfl.config import ConfigError

# (inputs, training) -> inputs ready for the model; runs on the device, on whole batches.
BatchTransform = Callable[[torch.Tensor, bool], torch.Tensor]


class Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Data:
    """Train/validation/test tensors for one dataset.

    Classification targets are int64 class indices; regression targets are float tensors of
    shape (N, num_outputs). ``transform`` normalises/augments a batch of raw inputs on the device
    (identity for tabular data, which is stored already standardised).
    """

    task: str
    num_outputs: int
    train: Split
    val: Split
    test: Split
    transform: Optional[BatchTransform] = None
    info: dict = field(default_factory=dict)
    channels_last: bool = False  # hand image batches to the model in NHWC memory format

    def to(self, device: torch.device) -> "Data":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def prepare(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        x = x if self.transform is None else self.transform(x, training)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def load_data(cfg: DictConfig, device: torch.device) -> Data:
    """Call the dataset config's ``loader`` and move the result onto ``device``."""
    loader = get_method(cfg.loader)
    data: Data = loader(cfg)
    if data.task != cfg.task:
        raise ConfigError(f"loader {cfg.loader} returned a {data.task} dataset, dataset.task says {cfg.task}")
    # A model is sized from the config's input_shape: catch a mismatch here, not deep in a forward.
    shape = list(data.train.x.shape[1:])
    if shape != list(cfg.input_shape):
        raise ConfigError(
            f"loader {cfg.loader} returned inputs of shape {shape}, dataset.input_shape says {list(cfg.input_shape)}"
        )
    return data.to(device)
