"""Atomic, checksummed checkpoints with one previous generation kept, so a job killed at any moment
(or a checkpoint damaged on disk) resumes from the last good state or, failing that, from scratch.

File layout: 8-byte magic, SHA-256 of the payload, then the ``torch.save`` payload. The checksum is
what catches damage that still unpickles (a flipped bit inside a tensor would otherwise resume
silently from wrong weights); the magic rejects files of another format before reading them whole.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adalfl.utils import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MAGIC = b"ADALFLC2"
_DIGEST = hashlib.sha256().digest_size


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, altered or of another format."""


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


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(data: bytes) -> dict[str, Any]:
    """The state in ``data``; raises CorruptCheckpoint for anything but an intact checkpoint."""
    if len(data) < len(MAGIC) + _DIGEST or not data.startswith(MAGIC):
        raise CorruptCheckpoint(f"not an adalfl checkpoint of format {FORMAT_VERSION} (or truncated)")
    digest, payload = data[len(MAGIC) : len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST :]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch: the file is truncated or damaged")
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CorruptCheckpoint("unexpected content")
    return state


class Checkpointer:
    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "checkpoint.pt"
        self.previous = out_dir / "checkpoint.prev.pt"
        self.loaded_from: Path | None = None

    def save(self, state: dict[str, Any]) -> None:
        data = encode(state)
        # Rotate first: if the job dies between the two renames, checkpoint.prev.pt is still whole.
        if self.path.exists():
            self.path.replace(self.previous)
        atomic_write_bytes(self.path, data)

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint that is intact, or None. Damaged files are reported and skipped."""
        self.loaded_from = None
        damaged: list[Path] = []
        for path in (self.path, self.previous):
            if not path.exists():
                continue
            try:
                state = decode(path.read_bytes())
            except Exception as err:  # noqa: BLE001 - any unreadable file is treated alike
                # Moved aside (kept for inspection) so the next save's rotation cannot push the
                # good previous generation out in favour of this one.
                aside = path.with_name(path.name + ".corrupt")
                log.warning(
                    "checkpoint %s is unusable (%s: %s); moved to %s", path, type(err).__name__, err, aside.name
                )
                path.replace(aside)
                damaged.append(path)
                continue
            self.loaded_from = path
            if damaged:
                log.warning("resuming from the previous checkpoint %s instead", path.name)
            return state
        if damaged:
            log.warning("no intact checkpoint in %s: the job restarts from scratch", self.path.parent)
        return None
