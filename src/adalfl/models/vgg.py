"""VGG-16 (Simonyan & Zisserman 2015), configuration D, for 32x32 inputs.

The thirteen 3x3 conv layers (with BatchNorm, as in torchvision's vgg16_bn) and five poolings
leave a 1x1x512 map on a 32x32 image, so the three 4096-unit layers sized for 224x224 ImageNet
are replaced by one linear layer, the usual CIFAR form. torchvision's ``make_layers`` is not
used because it fixes 3 input channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.models.common import conv_bn_relu, features_out, image_shape

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, batch_norm: bool = True) -> None:
        super().__init__()
        c, h, w = image_shape(input_shape, "VGG16")
        if min(h, w) < 32:
            raise ValueError(f"VGG16 pools five times and needs inputs of at least 32x32, got input_shape {list(input_shape)}")
        layers: list[nn.Module] = []
        for item in VGG16_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += conv_bn_relu(c, int(item), batch_norm=batch_norm)
                c = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features_out(self.features, input_shape), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
