"""Linear/logistic regression and the multilayer perceptron."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from adalfl.config import ConfigError
from adalfl.models.init import apply_init

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "elu": nn.ELU}


def _flat_size(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


class Linear(nn.Module):
    """Linear regression (regression) or multinomial logistic regression (classification logits).
    Xavier-uniform weights and zero bias, as in the first author's code (``models/linear.py``)."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, init: str = "xavier") -> None:
        super().__init__()
        self.fc = nn.Linear(_flat_size(input_shape), num_outputs)
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """Fully connected network. The first author's MLP (``models/mlp.py``) is two hidden layers of
    1000 ReLU units, Xavier-uniform weights and zero biases: the defaults here."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        widths: Sequence[int] = (1000, 1000),
        activation: str = "relu",
        batch_norm: bool = False,
        init: str = "xavier",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        size = _flat_size(input_shape)
        for width in widths:
            if int(width) <= 0:
                raise ConfigError(f"model.widths must be positive, got {list(widths)}")
            layers.append(nn.Linear(size, int(width)))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(width)))
            layers.append(ACTIVATIONS[activation]())
            size = int(width)
        layers.append(nn.Linear(size, num_outputs))
        self.net = nn.Sequential(*layers)
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
