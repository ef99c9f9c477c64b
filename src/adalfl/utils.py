"""Small shared helpers: seeding, devices, provenance, atomic files, phase timing."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, key: str = "runtime.device") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; a device this machine lacks is a ConfigError
    naming the setting ``key``."""
    from adalfl.config import check_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name, key)
    return torch.device(name)


def versions() -> dict[str, str]:
    import hydra
    import omegaconf

    import adalfl

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "adalfl": adalfl.__version__,
    }
    if torch.cuda.is_available():
        found["cuda"] = str(torch.version.cuda)
    return found


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The checkout's commit, suffixed ``-dirty`` when tracked files have changes; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class PhaseTimer:
    """Accumulates wall time per named phase (offline meta-learning, training, evaluation), and the
    job's total across attempts: a resumed job carries the times its checkpoint recorded."""

    def __init__(self, totals: dict[str, float] | None = None) -> None:
        self.totals: dict[str, float] = dict(totals or {})
        self.started = time.perf_counter()  # this attempt
        self.carried = 0.0  # total of earlier attempts, up to the checkpoint this one resumed from
        self._running: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self._running[name] = start
        try:
            yield
        finally:
            del self._running[name]
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def snapshot(self) -> dict[str, float]:
        """Totals so far, including the time spent in phases still running (for a checkpoint
        written in the middle of one, e.g. an offline phase)."""
        now = time.perf_counter()
        out = dict(self.totals)
        for name, start in self._running.items():
            out[name] = out.get(name, 0.0) + now - start
        return out

    def total(self) -> float:
        """Wall time of this job over all its attempts (each up to the checkpoint the next resumed from)."""
        return self.carried + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"totals": self.snapshot(), "total": self.total()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's times. Phases running now keep their own start; the checkpoint's
        time in them was spent before, so it is simply carried in the totals."""
        self.totals = dict(state["totals"])
        self.carried = float(state["total"])
