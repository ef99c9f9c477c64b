"""AlexNet (Krizhevsky et al. 2012) scaled to 32x32 inputs, as the paper's first author runs it
(EvoMAL code, ``models/alexnet.py``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.models.common import features_out, image_shape
from adalfl.models.init import apply_init


class AlexNet(nn.Module):
    """The canonical AlexNet is an ImageNet network (11x11 stride-4 first conv, 224x224 inputs,
    dropout 0.5 before both 4096-unit layers); on CIFAR it would shrink the image to nothing.

    The author's 32x32 form, followed here: the five conv layers with torchvision's widths
    (64-192-384-256-256) but a 3x3 stride-2 first conv and 2x2 max pools, so a 32x32 image ends
    as a 256 x 2 x 2 map; then 4096-4096-classes. His dropout layers have p = 0, i.e. no dropout,
    and that is what produced the paper's numbers: ``dropout`` defaults to 0 (no layer is built
    then). Kaiming-normal conv and linear weights, zero linear biases, conv biases PyTorch's
    default (``init="kaiming"``). 23,272,266 parameters on CIFAR-10.
    """

    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, dropout: float = 0.0, init: str = "kaiming"
    ) -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "AlexNet")
        self.features = nn.Sequential(
            nn.Conv2d(c, 64, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

        def drop() -> list[nn.Module]:
            return [nn.Dropout(dropout)] if dropout > 0 else []

        self.classifier = nn.Sequential(
            *drop(),
            nn.Linear(features_out(self.features, input_shape), 4096),
            nn.ReLU(inplace=True),
            *drop(),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_outputs),
        )
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
