"""AlexNet (Krizhevsky et al. 2012) scaled to 32x32 inputs.

torchvision's AlexNet expects 224x224 images (11x11 stride-4 first conv, 6x6 pooled map); on
CIFAR it would shrink the image to nothing. This variant keeps the five conv layers and their
widths (64-192-384-256-256, as in torchvision) and the two 4096-unit dropout layers, but uses a
3x3 stride-2 first conv and 2x2 pooling so a 32x32 image ends as a 2x2 map.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.models.common import features_out, image_shape


class AlexNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "AlexNet")
        self.features = nn.Sequential(
            nn.Conv2d(c, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(features_out(self.features, input_shape), 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
