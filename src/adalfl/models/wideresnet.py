"""Wide residual networks (Zagoruyko & Komodakis 2016), WRN-d-k for 32x32 images.

torchvision's wide_resnet50_2 is an ImageNet bottleneck network; the CIFAR/SVHN WRNs of the
paper (WRN-16-8 on SVHN, WRN-28-10 on CIFAR-100) are the pre-activation basic-block form:
depth = 6n + 4, three stages of 16k, 32k and 64k channels, optional dropout between the two
convs of a block. The first author's ``models/wideresnet.py`` has the same layers (1x1 shortcut
on the pre-activated input, final BN-ReLU, no dropout) and its init: conv weights
normal(0, sqrt(2 / (k*k*C_out))), a Xavier-uniform head with zero bias, BN 1/0.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

from torch import nn

from adalfl.config import ConfigError
from adalfl.models.common import ResidualTrunk, image_shape
from adalfl.models.init import apply_init
from adalfl.models.resnet import PreActBlock


class WideResNet(ResidualTrunk):
    """Zagoruyko & Komodakis's WRN-d-k, which is also the author's (``init="fan_out_xavier_linear"``)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        init: str = "fan_out_xavier_linear",
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"WideResNet depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        c, _, _ = image_shape(input_shape, "WideResNet")
        self.stem = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        widths = [base * widen_factor for base in (16, 32, 64) for _ in range(n)]
        self._build(widths, partial(PreActBlock, dropout=dropout), num_outputs)
        self.init_scheme = init
        apply_init(self)


# Named constructors, so that the model name in folders and tables (the _target_'s last part)
# tells WRN-16-8 from WRN-28-10.
def wrn16_8(
    input_shape: Sequence[int], num_outputs: int, dropout: float = 0.0, init: str = "fan_out_xavier_linear"
) -> WideResNet:
    """WRN-16-8 (the paper's SVHN network): 10,961,370 parameters with 10 outputs (the author's
    11,007,540 is with the 100-way head his SVHN config gives it)."""
    return WideResNet(input_shape, num_outputs, depth=16, widen_factor=8, dropout=dropout, init=init)


def wrn28_10(
    input_shape: Sequence[int], num_outputs: int, dropout: float = 0.0, init: str = "fan_out_xavier_linear"
) -> WideResNet:
    """WRN-28-10 (the paper's CIFAR-100 network): 36,536,884 parameters on CIFAR-100."""
    return WideResNet(input_shape, num_outputs, depth=28, widen_factor=10, dropout=dropout, init=init)
