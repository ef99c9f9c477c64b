"""Helpers shared by the benchmark scripts: key=value settings, device sync, machine facts."""

from __future__ import annotations

import os
import platform

import torch


def settings_from_argv(defaults: dict, argv: list[str]) -> dict:
    """key=value overrides of ``defaults``, converted to each default's type (Hydra-like, no app)."""
    values = dict(defaults)
    for item in argv:
        key, _, value = item.partition("=")
        if key not in values or not value:
            raise SystemExit(f"unknown or empty setting {item!r}; settings: {sorted(values)}")
        default = defaults[key]
        if isinstance(default, list):
            values[key] = [v for v in value.strip("[]").split(",") if v]
        elif isinstance(default, bool):
            values[key] = value.lower() in ("1", "true", "yes")
        else:
            values[key] = type(default)(value)
    return values


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
