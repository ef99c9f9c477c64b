"""VGG-16 (Simonyan & Zisserman 2015), configuration D, for 32x32 inputs, as the paper's first
author runs it (EvoMAL code, ``models/vgg.py``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.config import ConfigError
from adalfl.models.common import conv_bn_relu, features_out, image_shape
from adalfl.models.init import apply_init

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """Simonyan & Zisserman's VGG-16 has no BatchNorm and three fully connected layers (4096-4096-
    classes) sized for 224x224 images.

    The author's CIFAR form, followed here: the thirteen 3x3 conv layers, each with BatchNorm and
    ReLU and keeping its conv bias (as torchvision's vgg16_bn does; the bias is redundant before BN
    but it is what ran), five 2x2 max pools leaving 512 x 1 x 1, and one linear layer to the
    classes. Kaiming-normal conv and linear weights, zero linear bias, conv biases PyTorch's default
    (``init="kaiming"``). 14,728,266 parameters on CIFAR-10. (His extra ``AvgPool2d(1)`` is a no-op
    and left out; torchvision's ``make_layers`` is not used because it fixes 3 input channels.)
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        batch_norm: bool = True,
        conv_bias: bool = True,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        c, h, w = image_shape(input_shape, "VGG16")
        if min(h, w) < 32:
            raise ConfigError(
                f"VGG16 pools five times and needs inputs of at least 32x32, got input_shape {list(input_shape)}"
            )
        layers: list[nn.Module] = []
        for item in VGG16_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += conv_bn_relu(c, int(item), batch_norm=batch_norm, bias=conv_bias)
                c = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features_out(self.features, input_shape), num_outputs)
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
