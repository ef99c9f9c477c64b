"""SqueezeNet (Iandola et al. 2016) for 32x32 images, built from torchvision's Fire module.

torchvision's SqueezeNet starts with a 7x7 (or 3x3) stride-2 conv and pools three times with
3x3 windows, sized for 224x224 images. Here: a 3x3 stride-1 stem of 96 channels, the eight Fire
modules of SqueezeNet 1.0 with their widths, 2x2 max pools after the stem, Fire 4 and Fire 8,
dropout 0.5, a 1x1 conv to the classes and global average pooling. The final ReLU of the
original classifier is left out so that the outputs are unconstrained logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.squeezenet import Fire

from adalfl.models.common import image_shape


class SqueezeNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "SqueezeNet")
        self.features = nn.Sequential(
            nn.Conv2d(c, 96, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), nn.MaxPool2d(2),
            Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            nn.MaxPool2d(2),
            Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(512, num_outputs, 1), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).flatten(1)
