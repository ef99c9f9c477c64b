"""Residual networks: ResNet-18 (torchvision's definition, CIFAR stem), the first author's
pre-activation ResNet-18, and the pre-activation ResNet of He et al. (2016b) in its CIFAR form."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from adalfl.config import ConfigError
from adalfl.models.common import ResidualTrunk, image_shape
from adalfl.models.init import apply_init, reset_parameters


class ResNet18(nn.Module):
    """He et al.'s ResNet-18 is an ImageNet network (7x7 stride-2 stem and a max pool, which would
    reduce a 32x32 image to 8x8 before the first block).

    The author's CIFAR form (EvoMAL code, ``models/resnet.py``), built here from torchvision's
    ``ResNet(BasicBlock, [2, 2, 2, 2])`` with the stem replaced: a 3x3 stride-1 conv + BN + ReLU,
    no max pool, 1x1 conv + BN projection shortcuts, global average pooling, a linear head; the
    same layers as his. Kaiming-normal conv and linear weights, zero linear bias, BN 1/0
    (``init="kaiming"``; torchvision's own fan-out init is replaced through ``reset_parameters``).
    11,173,962 parameters on CIFAR-10.
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int, init: str = "kaiming") -> None:
        super().__init__()
        c, _, _ = image_shape(input_shape, "ResNet18")
        self.net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_outputs)
        self.net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()
        self.init_scheme = init
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


class PreResNet(nn.Module):
    """Pre-activation ResNet (He et al. 2016b, "Identity Mappings") in the first author's form
    (EvoMAL code, ``models/preresnet.py``): ResNet-18's four stages of 64, 128, 256 and 512
    channels (``blocks`` per stage; (2, 2, 2, 2) is PreResNet-18), pre-activation basic blocks
    whose 1x1 projection shortcut sees the pre-activated input, a bare 3x3 stem conv, and no final
    BN-ReLU (He et al.'s networks end with one; his does not), then global average pooling and a
    linear head. Conv weights normal(0, sqrt(2 / (k*k*C_out))), Kaiming-normal head, zero head bias
    (``init="fan_out_kaiming_linear"``).

    His class takes ``num_classes`` (default 10) while his runner passes ``output_dim``, so as he
    ran it CIFAR-100 got a 10-way head (11,171,146 parameters); here the head has the dataset's
    ``num_outputs``: 11,217,316 parameters on CIFAR-100.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        blocks: Sequence[int] = (2, 2, 2, 2),
        init: str = "fan_out_kaiming_linear",
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ConfigError(f"PreResNet has four stages of at least one block, got blocks {list(blocks)}")
        c, _, _ = image_shape(input_shape, "PreResNet")
        self.stem = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        c_in = 64
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for i in range(int(n)):
                layers.append(PreActBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_outputs)
        self.init_scheme = init
        apply_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class CifarPreResNet(ResidualTrunk):
    """Pre-activation ResNet in He et al.'s CIFAR form: depth = 6n + 2 (n blocks per stage, 3
    stages of 16, 32 and 64 channels times ``width``), final BN-ReLU, global average pool, linear
    head. Not the paper's network (``PreResNet`` is); kept as ``model=preresnet20``, the project's
    earlier reconstruction, with PyTorch's default initialisation as it had."""

    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, depth: int = 20, width: int = 1, init: str = "default"
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"PreResNet depth must be 6n + 2 (20, 32, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        c, _, _ = image_shape(input_shape, "CifarPreResNet")
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self._build([w for w in widths for _ in range(n)], PreActBlock, num_outputs)
        self.init_scheme = init
        apply_init(self)


# Named constructors, so that the model name in folders and tables (the _target_'s last part)
# says which PreResNet ran: the author's PreResNet-18 or the CIFAR depth-20 form.
def preresnet18(input_shape: Sequence[int], num_outputs: int, init: str = "fan_out_kaiming_linear") -> PreResNet:
    """PreResNet-18 as the first author builds it (the paper's CIFAR-100 PreResNet): 11.2M parameters."""
    return PreResNet(input_shape, num_outputs, blocks=(2, 2, 2, 2), init=init)


def preresnet20(input_shape: Sequence[int], num_outputs: int, init: str = "default") -> CifarPreResNet:
    """He et al.'s CIFAR PreResNet-20 (0.28M parameters): the project's earlier stand-in."""
    return CifarPreResNet(input_shape, num_outputs, depth=20, init=init)
