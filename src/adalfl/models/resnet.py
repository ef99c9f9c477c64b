"""Residual networks: ResNet-18 (torchvision's definition, CIFAR stem) and the pre-activation
ResNet of He et al. (2016b) in its CIFAR form."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from adalfl.models.common import ResidualTrunk, image_shape
from adalfl.models.init import reset_parameters


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with the usual 32x32 stem: a 3x3 stride-1 first conv and no max
    pool (the ImageNet stem, 7x7 stride 2 + pool, would reduce a 32x32 image to 8x8 before the
    first block). Stages, blocks and widths are torchvision's.

    torchvision initialises convs with Kaiming-normal; the layers are re-drawn with their own
    ``reset_parameters`` so a built model and a meta-learning re-initialisation share one distribution.
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "ResNet18")
        self.net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_outputs)
        self.net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()
        reset_parameters(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the input; a 1x1 conv shortcut when the shape
    changes. Dropout between the convolutions is the Wide ResNet variant (Zagoruyko & Komodakis)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in He et al. (2016b).
        skip = x if self.shortcut is None else self.shortcut(out)
        out = torch.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + skip


class PreResNet(ResidualTrunk):
    """Pre-activation ResNet for 32x32 images: depth = 6n + 2 (n blocks per stage, 3 stages of
    16, 32 and 64 channels times ``width``), final BN-ReLU, global average pool, linear head."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, depth: int = 20, width: int = 1) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"PreResNet depth must be 6n + 2 (20, 32, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        c, _, _ = image_shape(input_shape, "PreResNet")
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self._build([w for w in widths for _ in range(n)], PreActBlock, num_outputs)
