"""Helpers shared by the convolutional models.

Each model names its weight initialisation in ``init_scheme`` (``adalfl.models.init``) and applies
it at the end of ``__init__``; meta-learning draws fresh initialisations with
``adalfl.models.reset_parameters`` (every layer's own ``reset_parameters``, then the scheme), so a
model built from scratch and a re-drawn one come from the same distribution.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from adalfl.config import ConfigError


def image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """(channels, height, width) of a dataset's input_shape; a clear error for tabular shapes."""
    if len(input_shape) != 3:
        raise ConfigError(f"{model} needs image inputs (C, H, W), the dataset's input_shape is {list(input_shape)}")
    c, h, w = (int(v) for v in input_shape)
    return c, h, w


@torch.no_grad()
def features_out(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Size of ``net``'s flattened output for one input: sizes a classifier for any image size."""
    was_training = net.training
    net.eval()  # BatchNorm must not count this dummy batch in its running statistics
    size = net(torch.zeros(1, *input_shape)).flatten(1).shape[1]
    net.train(was_training)
    return int(size)


def conv_bn_relu(
    c_in: int,
    c_out: int,
    kernel: int = 3,
    stride: int = 1,
    padding: int = 1,
    batch_norm: bool = True,
    bias: bool | None = None,
    relu: bool = True,
) -> list[nn.Module]:
    """Conv [+ BatchNorm] [+ ReLU]. ``bias=None``: a conv bias only when no BatchNorm follows (it
    would be cancelled by the mean subtraction); the first author's VGG and All-CNN-C keep it, so
    they pass ``bias=True``."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=not batch_norm if bias is None else bias)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class ResidualTrunk(nn.Module):
    """The shape PreResNet, Wide ResNet and PyramidNet share: a 16-channel ``stem`` (set by the
    subclass), residual blocks in three stages (the first block of stages 2 and 3 halves the
    resolution), then BN-ReLU, global average pooling and a linear head."""

    stem: nn.Module

    def _build(self, widths: Sequence[int], make_block: Callable[[int, int, int], nn.Module], num_outputs: int) -> None:
        """One block per entry of ``widths`` (its output channels), a third of them per stage."""
        per_stage = len(widths) // 3
        blocks: list[nn.Module] = []
        c_in = 16
        for i, c_out in enumerate(widths):
            blocks.append(make_block(c_in, c_out, 2 if i in (per_stage, 2 * per_stage) else 1))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.head = nn.Linear(c_in, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        out = torch.relu(self.bn(out)).mean(dim=(2, 3))
        return self.head(out)
