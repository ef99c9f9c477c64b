"""Atomic checkpoints with one previous generation kept, so a job killed at any moment (or a
checkpoint damaged on disk) resumes from the last good state or, failing that, from scratch."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adalfl.utils import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "checkpoint.pt"
        self.previous = out_dir / "checkpoint.prev.pt"

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save({"format": FORMAT_VERSION, **state}, buffer)
        if self.path.exists():
            self.path.replace(self.previous)
        atomic_write_bytes(self.path, buffer.getvalue())

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads, or None. Damaged files are reported and skipped."""
        for path in (self.path, self.previous):
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
                    raise ValueError("not a checkpoint of this format")
                return state
            except Exception as err:  # noqa: BLE001 - any unreadable file is treated alike
                log.warning("checkpoint %s is unreadable (%s: %s); skipping it", path, type(err).__name__, err)
        return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)
