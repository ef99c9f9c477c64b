"""SqueezeNet (Iandola et al. 2016) for 32x32 images, as the paper's first author runs it (EvoMAL
code, ``models/squeezenet.py``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adalfl.models.common import conv_bn_relu, image_shape
from adalfl.models.init import apply_init


class Fire(nn.Module):
    """Squeeze 1x1 -> (expand 1x1 | expand 3x3), each conv followed by BatchNorm and ReLU; the two
    expand halves (``c_out / 2`` channels each) are concatenated. torchvision's Fire has no BN."""

    def __init__(self, c_in: int, c_out: int, squeeze: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"Fire needs an even number of output channels, got {c_out}")
        self.squeeze = nn.Sequential(*conv_bn_relu(c_in, squeeze, kernel=1, padding=0, bias=True))
        self.expand1x1 = nn.Sequential(*conv_bn_relu(squeeze, c_out // 2, kernel=1, padding=0, bias=True))
        self.expand3x3 = nn.Sequential(*conv_bn_relu(squeeze, c_out // 2, kernel=3, padding=1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], 1)


class SqueezeNet(nn.Module):
    """Iandola et al.'s SqueezeNet 1.0 is an ImageNet network without BatchNorm: a 7x7 stride-2
    stem, 3x3 stride-2 max pools, dropout 0.5 before the class conv, a ReLU on the class map, and
    the simple bypass only as a variant.

    The author's 32x32 form, followed here: a 3x3 stride-1 stem of 96 channels, the eight Fire
    modules with SqueezeNet 1.0's widths, 2x2 max pools after the stem, fire4 and fire8, BatchNorm
    after every conv but the class conv (all convs keep their bias), the simple bypass (identity
    shortcut) around fire3, fire5 and fire7 (not fire9), no dropout, and a 1x1 class conv with no
    ReLU, globally average pooled (unconstrained logits). Xavier-uniform conv weights, conv biases
    PyTorch's default, BN 1/0 (``init="xavier_convs"``). 781,156 parameters with 100 classes,
    734,986 with 10.
    """

    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, bypass: bool = True, init: str = "xavier_convs"
    ) -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "SqueezeNet")
        self.stem = nn.Sequential(*conv_bn_relu(c, 96, bias=True), nn.MaxPool2d(2))
        self.fire2 = Fire(96, 128, 16)
        self.fire3 = Fire(128, 128, 16)
        self.fire4 = Fire(128, 256, 32)
        self.fire5 = Fire(256, 256, 32)
        self.fire6 = Fire(256, 384, 48)
        self.fire7 = Fire(384, 384, 48)
        self.fire8 = Fire(384, 512, 64)
        self.fire9 = Fire(512, 512, 64)
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Conv2d(512, num_outputs, 1)
        self.bypass = bypass
        self.init_scheme = init
        apply_init(self)

    def _fire(self, fire: Fire, x: torch.Tensor, shortcut: bool) -> torch.Tensor:
        out = fire(x)
        return out + x if shortcut and self.bypass else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._fire(self.fire2, self.stem(x), False)
        out = self._fire(self.fire3, out, True)
        out = self.pool(self._fire(self.fire4, out, False))
        out = self._fire(self.fire5, out, True)
        out = self._fire(self.fire6, out, False)
        out = self._fire(self.fire7, out, True)
        out = self.pool(self._fire(self.fire8, out, False))
        out = self._fire(self.fire9, out, False)
        return self.classifier(out).mean(dim=(2, 3))
