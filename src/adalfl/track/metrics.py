"""metrics.jsonl: one JSON object per logged step, mirrored to W&B with the same keys."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, TextIO

import torch

from adalfl.track.wandb_logger import WandbLogger


def _to_float(value: float | torch.Tensor) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class Tracker:
    """Appends records ``{"phase", "step", <scalars>}``; keeps them in memory for plots."""

    def __init__(self, out_dir: Path, wandb: WandbLogger | None = None) -> None:
        self.out_dir = out_dir
        self.path = out_dir / "metrics.jsonl"
        self.wandb = wandb
        self.records: list[dict] = []
        self._file: TextIO | None = None

    def _open(self) -> TextIO:
        if self._file is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends; close() closes it
        return self._file

    def log(self, phase: str, step: int, scalars: Mapping[str, float | torch.Tensor]) -> dict:
        values = {key: _to_float(val) for key, val in scalars.items()}
        record = {"phase": phase, "step": int(step), **values}
        # NaN/inf are not JSON; write them as null so every line stays parseable.
        line = json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()})
        handle = self._open()
        handle.write(line + "\n")
        handle.flush()
        self.records.append(record)
        if self.wandb is not None:
            self.wandb.log(phase, step, values)
        return record

    def image(self, key: str, path: Path, phase: str, step: int) -> None:
        if self.wandb is not None:
            self.wandb.image(key, path, phase, step)

    def offset(self) -> int:
        """Bytes written so far, recorded in checkpoints so a resume can cut what came after."""
        if self._file is not None:
            self._file.flush()
        return self.path.stat().st_size if self.path.exists() else 0

    def resume_from(self, offset: int) -> None:
        """Drop records written after ``offset`` (they belong to steps that will be redone) and
        reload the rest for plotting."""
        self.close()
        if self.path.exists():
            with open(self.path, "r+b") as handle:
                # min(): a file shorter than the checkpoint says (edited by hand) is kept as it is
                # rather than padded with NUL bytes.
                handle.truncate(min(offset, self.path.stat().st_size))
            with open(self.path, encoding="utf-8") as handle:
                self.records = [json.loads(line) for line in handle if line.strip()]
        else:
            self.records = []

    def reset(self) -> None:
        """Start the file afresh (a job restarted from scratch)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.records = []

    def series(self, phase: str, key: str) -> tuple[list[int], list[float]]:
        steps, values = [], []
        for record in self.records:
            if record["phase"] == phase and record.get(key) is not None:
                steps.append(record["step"])
                values.append(record[key])
        return steps, values

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
