"""Per-model weight initialisation, as the first author's EvoMAL code draws it.

A model that wants a non-default initialisation names it in a class attribute ``init_scheme``
(one of ``SCHEMES``); ``reset_parameters`` first resets every layer to PyTorch's default and then
applies the scheme. Fresh initialisations in the offline meta phases go through the same function,
so a model built from scratch and a model re-drawn mid-run come from one distribution.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from adalfl.config import ConfigError

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _xavier_zero_bias(model: nn.Module) -> None:
    """Xavier-uniform weights and zero biases on every conv and linear layer (linear, MLP, LeNet-5)."""
    for m in model.modules():
        if isinstance(m, _CONV_LINEAR):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _kaiming_convs_zero_linear_bias(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) conv and linear weights, linear biases zero; conv biases
    keep PyTorch's default (AlexNet, VGG, ResNet-18)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _kaiming_convs(model: nn.Module) -> None:
    """Kaiming-normal conv weights, everything else PyTorch's default (All-CNN-C)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


def _xavier_convs(model: nn.Module) -> None:
    """Xavier-uniform conv weights, everything else PyTorch's default (SqueezeNet)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)


def _fan_out_convs(model: nn.Module, linear: Callable[[torch.Tensor], object]) -> None:
    """Convs normal(0, sqrt(2 / (k*k*C_out))) (He et al.'s fan-out form), linear weights by
    ``linear`` and linear biases zero (PreResNet, WRN, PyramidNet: each author file's ``reset``
    zeroes the head's bias)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
        elif isinstance(m, nn.Linear):
            linear(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


SCHEMES: dict[str, Callable[[nn.Module], None]] = {
    "default": lambda model: None,
    "xavier": _xavier_zero_bias,
    "kaiming": _kaiming_convs_zero_linear_bias,
    "kaiming_convs": _kaiming_convs,
    "xavier_convs": _xavier_convs,
    "fan_out_kaiming_linear": lambda model: _fan_out_convs(model, nn.init.kaiming_normal_),
    "fan_out_xavier_linear": lambda model: _fan_out_convs(model, nn.init.xavier_uniform_),
}


@torch.no_grad()
def reset_parameters(model: nn.Module) -> None:
    """Draw a fresh initialisation in place: every layer's own ``reset_parameters`` (PyTorch's
    default), then the model's ``init_scheme``."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    apply_init(model)


@torch.no_grad()
def apply_init(model: nn.Module) -> None:
    """The model's own ``init_scheme`` over whatever its layers hold now."""
    scheme = getattr(model, "init_scheme", "default")
    if scheme not in SCHEMES:
        raise ConfigError(f"{type(model).__name__}.init_scheme {scheme!r} is not one of {sorted(SCHEMES)}")
    SCHEMES[scheme](model)
