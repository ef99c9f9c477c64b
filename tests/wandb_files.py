"""Read an offline W&B run back the way W&B itself does, to test what `wandb sync` would upload.

wandb's own reader of the binary ``run-<id>.wandb`` transaction log is ``wandb leet inspect``
(wandb-core): ``--json`` prints one JSON object per record, ``--summary --json`` the run's state,
config and final summary. Media (images, tables) are files under the run's ``files/`` folder that
the summary points to by ``path``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _inspect(run_dir: Path, *flags: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", *flags, str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@dataclass
class OfflineRun:
    folder: Path  # <dir>/wandb/offline-run-<time>-<id>
    records: list[dict[str, Any]]  # every record of the transaction log, in order
    state: dict[str, Any]  # `leet inspect --summary`: state, exit_code, config, summary, tags, ...

    @classmethod
    def read(cls, folder: Path) -> "OfflineRun":
        records = [json.loads(line) for line in _inspect(folder, "--json").splitlines() if line.strip()]
        return cls(folder, records, json.loads(_inspect(folder, "--summary", "--json")))

    @property
    def run(self) -> dict[str, Any]:
        """The run record: id, project, group, job_type, tags, config as first sent."""
        return next(r["run"] for r in self.records if r["type"] == "run")

    @property
    def config(self) -> dict[str, Any]:
        return self.state["config"]

    @property
    def summary(self) -> dict[str, Any]:
        return self.state["summary"]

    def history(self) -> list[dict[str, Any]]:
        return [r["history"]["item"] for r in self.records if r["type"] == "history"]

    def media(self, key: str) -> Path:
        """The file an image or table summary value points to (asserting it is there)."""
        path = self.folder / "files" / self.summary[key]["path"]
        assert path.is_file(), path
        return path

    def table(self, key: str) -> tuple[list[str], list[list[Any]]]:
        assert self.summary[key]["_type"] == "table-file"
        data = json.loads(self.media(key).read_text())
        return data["columns"], data["data"]


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(wandb_dir.glob("offline-run-*"))
