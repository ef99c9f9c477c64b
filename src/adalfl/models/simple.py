"""Linear/logistic regression and the multilayer perceptron."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "elu": nn.ELU}


def reset_parameters(model: nn.Module) -> None:
    """Draw a fresh initialisation in place (every layer's own ``reset_parameters``)."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _flat_size(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


class Linear(nn.Module):
    """Linear regression (regression) or multinomial logistic regression (classification logits)."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        self.fc = nn.Linear(_flat_size(input_shape), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        widths: Sequence[int] = (100, 100),
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        size = _flat_size(input_shape)
        for width in widths:
            if int(width) <= 0:
                raise ValueError(f"model.widths must be positive, got {list(widths)}")
            layers.append(nn.Linear(size, int(width)))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(width)))
            layers.append(ACTIVATIONS[activation]())
            size = int(width)
        layers.append(nn.Linear(size, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
