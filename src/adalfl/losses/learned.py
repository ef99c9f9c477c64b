"""Learned-loss parameterisations. Each is output-wise: a scalar function l(prediction_c, target_c)
applied to every output of every example and averaged, M(y, f(x)) = mean_b (1/C) sum_c l(f_bc, y_bc).
Classification feeds softmax probabilities and one-hot targets, regression raw values
(``Task.loss_inputs``)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adalfl.losses.task import Task


class SmoothLeakyReLU(nn.Module):
    """phi(x) = (1/beta) log(1 + exp(beta x)) (1 - gamma) + gamma x  (AdaLFL, Eq. for the loss network).

    Smooth everywhere (second derivatives exist, which the meta-gradient needs) and never flat
    (slope >= gamma), so the learned loss cannot lose its gradient on one side.
    """

    def __init__(self, beta: float = 10.0, gamma: float = 0.01) -> None:
        super().__init__()
        if beta <= 0 or not 0 <= gamma < 1:
            raise ValueError(f"smooth leaky ReLU needs beta > 0 and 0 <= gamma < 1, got beta={beta}, gamma={gamma}")
        self.beta, self.gamma = float(beta), float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.softplus(x, beta) is (1/beta) log(1 + exp(beta x)), computed stably for large beta x.
        return F.softplus(x, beta=self.beta) * (1 - self.gamma) + self.gamma * x

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}"


def _activation(name: str, beta: float, gamma: float) -> nn.Module:
    if name == "smooth_leaky_relu":
        return SmoothLeakyReLU(beta, gamma)
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":
        return nn.Softplus()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}: use smooth_leaky_relu, relu, softplus or none")


class PointwiseNetwork(nn.Module):
    """l_phi: R^2 -> R, a small MLP on (prediction, target) pairs."""

    def __init__(
        self,
        hidden: Sequence[int] = (40, 40),
        activation: str = "smooth_leaky_relu",
        output_activation: str = "smooth_leaky_relu",
        beta: float = 10.0,
        gamma: float = 0.01,
        init: str = "default",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = 2
        for width in hidden:
            layers += [nn.Linear(size, int(width)), _activation(activation, beta, gamma)]
            size = int(width)
        layers += [nn.Linear(size, 1), _activation(output_activation, beta, gamma)]
        self.net = nn.Sequential(*layers)
        if init == "xavier":
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
        elif init != "default":
            raise ValueError(f"unknown loss-network init {init!r}: use default (PyTorch's) or xavier")

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.net(pairs).squeeze(-1)


class OutputWiseLoss(nn.Module):
    """M_phi(y, f(x)): the pointwise function averaged over outputs and batch."""

    def __init__(self, task: Task, pointwise: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.pointwise = pointwise

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction, target_values = self.task.loss_inputs(output, target)
        pairs = torch.stack((prediction, target_values), dim=-1)
        return self.pointwise(pairs).mean()

    @torch.no_grad()
    def curve(self, points: torch.Tensor, target_value: float) -> torch.Tensor:
        """l(prediction, target) for a fixed target value over a grid of predictions (for plots)."""
        pairs = torch.stack((points, torch.full_like(points, target_value)), dim=-1)
        return self.pointwise(pairs)
