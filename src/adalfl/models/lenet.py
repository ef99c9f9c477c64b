"""Small convolutional networks: LeNet-5 (MNIST; the author's tanh form and a ReLU form) and a
three-layer CNN used by tests and benchmarks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.config import ConfigError
from adalfl.models.common import features_out, image_shape
from adalfl.models.init import apply_init


class LeNet5(nn.Module):
    """LeNet-5 as the paper's first author runs it (EvoMAL code, ``models/lenet5.py``): LeCun et
    al.'s (1998) layer plan with tanh and 2x2 average pooling, no padding, a plain linear output.

    conv5x5(6) - tanh - avgpool - conv5x5(16) - tanh - avgpool - fc120 - tanh - fc84 - tanh -
    fc(classes); Xavier-uniform weights, zero biases. On 28x28 MNIST the features are 16 x 4 x 4:
    44,426 parameters. The canonical LeNet-5 pads MNIST to 32x32 and uses trainable subsampling
    and RBF outputs; the ReLU/max-pool form is ``LeNet5ReLU`` (``model=lenet5_relu``).
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int, init: str = "xavier") -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "LeNet5")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(features_out(self.features, input_shape), 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, num_outputs),
        )
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class LeNet5ReLU(nn.Module):
    """LeNet-5 in its modern form: ReLU and max pooling instead of tanh and subsampling, a plain
    linear output, PyTorch's default initialisation (not the paper's network: ``LeNet5`` is).

    conv5x5(6, padding 2) - pool - conv5x5(16) - pool - fc120 - fc84 - fc(classes). The padding
    keeps 28x28 MNIST at the 32x32 geometry of the original (16 x 5 x 5 features): 61,706 parameters.
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int, init: str = "default") -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "LeNet5ReLU")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(features_out(self.features, input_shape), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_outputs),
        )
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SmallCNN(nn.Module):
    """Three 3x3 conv layers (each ReLU, the first two max-pooled), global average pool, linear head.

    Cheap enough for CPU tests and benchmarks yet a real CNN with BatchNorm if asked for. Not a
    paper network; PyTorch's default initialisation unless ``init`` says otherwise.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        widths: Sequence[int] = (32, 64, 64),
        batch_norm: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ConfigError(f"SmallCNN has three conv layers, got widths {list(widths)}")
        c, _, _ = image_shape(input_shape, "SmallCNN")
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(c, int(width), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(width)))
            layers.append(nn.ReLU())
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c = int(width)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(c, num_outputs)
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
