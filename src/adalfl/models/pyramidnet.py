"""PyramidNet (Han et al. 2017), additive, with basic blocks, for 32x32 images.

Instead of doubling at each stage, the width grows by alpha / N at every one of the N blocks,
from 16 to 16 + alpha. Blocks are BN-conv3x3-BN-ReLU-conv3x3-BN; the shortcut is the identity
(2x2 average pooled when the block downsamples) with zero channels appended, so no parameters.
depth = 6n + 2 with n blocks per stage; PyramidNet-110 (alpha 48) has 1,778,556 parameters on
CIFAR-100.

The first author's ``models/pyramidnet.py`` has the same layers and per-block widths. Two of its
defects are not copied: it takes ``num_classes`` (default 10) while his runner passes
``output_dim``, so CIFAR-100 got a 10-way head (1,772,706 parameters); here the head has the
dataset's ``num_outputs``. And its zero channels are a ``torch.cuda.FloatTensor`` (fails on CPU);
here ``F.pad`` appends them on whatever device the input is. His init is kept: conv weights
normal(0, sqrt(2 / (k*k*C_out))), a Xavier-uniform head with zero bias, BN 1/0
(``init="fan_out_xavier_linear"``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adalfl.config import ConfigError
from adalfl.models.common import ResidualTrunk, image_shape
from adalfl.models.init import apply_init


class PyramidBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.extra_channels = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.bn3(self.conv2(torch.relu(self.bn2(out))))
        # ceil_mode: matches the strided conv's output on odd sizes too (as the author's pool does)
        skip = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride != 1 else x
        if self.extra_channels > 0:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra_channels))  # zero channels appended
        return out + skip


class PyramidNet(ResidualTrunk):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        depth: int = 110,
        alpha: int = 48,
        init: str = "fan_out_xavier_linear",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"PyramidNet depth must be 6n + 2 (110, 164, ...), got {depth}")
        n = (depth - 2) // 6
        c, _, _ = image_shape(input_shape, "PyramidNet")
        self.stem = nn.Sequential(nn.Conv2d(c, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        # The width grows by alpha / (3n) at every block, rounded per block.
        widths = [int(round(16.0 + alpha * (j + 1) / (3 * n))) for j in range(3 * n)]
        self._build(widths, PyramidBlock, num_outputs)
        self.init_scheme = init
        apply_init(self)
