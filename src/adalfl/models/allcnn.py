"""All-CNN-C (Springenberg et al. 2015) as the paper's first author runs it (EvoMAL code,
``models/allcnnc.py``), with its pooling defect fixed."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.models.common import conv_bn_relu, image_shape
from adalfl.models.init import apply_init


class AllCNNC(nn.Module):
    """Springenberg et al.'s All-CNN-C has no BatchNorm: dropout 0.2 on the input and 0.5 after
    each strided conv, ReLU after every conv but the class conv, a 3x3 *valid* conv7 (6x6 map)
    and global average pooling.

    The author's network, followed here because it produced the paper's numbers: conv1-conv9 all
    keep their bias and are each followed by BatchNorm, including the class conv9 (so the logits
    are batch-normalised with a learnable per-class scale and shift; unusual but not a defect,
    kept); no ReLU after the strided conv3 and conv6 (each goes BN -> dropout 0.5 -> next conv);
    no input dropout; conv7 is 3x3 with padding 1, so the map stays 8x8.

    One defect is fixed: his ``AvgPool2d(6, stride=num_outputs)`` on the 8x8 map averages only
    its top-left 6x6 window (28 of the 64 positions never reach the output). Here the class map is
    averaged over all positions (global average pooling, as the paper intends). The pool has no
    parameters, so the count is his: 1,372,254 on CIFAR-10. Kaiming-normal conv weights, conv
    biases PyTorch's default, BN 1/0 (``init="kaiming_convs"``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        input_dropout: float = 0.0,
        dropout: float = 0.5,
        init: str = "kaiming_convs",
    ) -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "AllCNNC")

        def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> list[nn.Module]:
            return conv_bn_relu(c_in, c_out, kernel, stride, padding=kernel // 2, bias=True, relu=relu)

        self.net = nn.Sequential(
            *([nn.Dropout(input_dropout)] if input_dropout > 0 else []),
            *conv(c, 96),
            *conv(96, 96),
            *conv(96, 96, stride=2, relu=False),
            nn.Dropout(dropout),
            *conv(96, 192),
            *conv(192, 192),
            *conv(192, 192, stride=2, relu=False),
            nn.Dropout(dropout),
            *conv(192, 192),
            *conv(192, 192, kernel=1),
            *conv(192, num_outputs, kernel=1, relu=False),
            nn.AdaptiveAvgPool2d(1),  # the whole map (the author's pool kept the top-left 6x6 of 8x8)
        )
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)
