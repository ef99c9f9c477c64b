"""All-CNN-C (Springenberg et al. 2015): only convolutions, strided convs instead of pooling.

As in the paper: dropout 0.2 on the input and 0.5 after each strided conv, three 96-channel and
three 192-channel 3x3 convs (the third of each stride 2), a 3x3 valid conv, two 1x1 convs (the
last one to the classes) and global average pooling. No BatchNorm by default (the paper has
none); ``batch_norm: true`` adds it after every conv but the last.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.models.common import conv_bn_relu, image_shape


class AllCNNC(nn.Module):
    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, batch_norm: bool = False,
        input_dropout: float = 0.2, dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "AllCNNC")
        bn = batch_norm
        self.net = nn.Sequential(
            nn.Dropout(input_dropout),
            *conv_bn_relu(c, 96, batch_norm=bn), *conv_bn_relu(96, 96, batch_norm=bn),
            *conv_bn_relu(96, 96, stride=2, batch_norm=bn), nn.Dropout(dropout),
            *conv_bn_relu(96, 192, batch_norm=bn), *conv_bn_relu(192, 192, batch_norm=bn),
            *conv_bn_relu(192, 192, stride=2, batch_norm=bn), nn.Dropout(dropout),
            *conv_bn_relu(192, 192, padding=0, batch_norm=bn),
            *conv_bn_relu(192, 192, kernel=1, padding=0, batch_norm=bn),
            nn.Conv2d(192, num_outputs, 1),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)
