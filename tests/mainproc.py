"""Start ``main.py`` in a child process, as a user would, for the tests that need a real process:
SIGKILL, launchers that spawn workers, Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from adalfl.result import Result

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    """This checkout's sources first on the path (also for workers the launchers start), W&B offline."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    out.update(WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1")
    return out


def command(overrides: Sequence[str], multirun: bool = False) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), *(["-m"] if multirun else []), *overrides]


def run_main(overrides: Sequence[str], multirun: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run to completion; fails the test with the child's output if it does not exit cleanly."""
    proc = subprocess.run(
        command(overrides, multirun), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"main.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def start_main(overrides: Sequence[str], log: Path) -> subprocess.Popen:
    """Start without waiting; output goes to ``log`` (a pipe nobody reads could block the child)."""
    handle = open(log, "w")  # noqa: SIM115 - closed with the process by the caller's wait
    return subprocess.Popen(command(overrides), cwd=REPO, env=env(), stdout=handle, stderr=subprocess.STDOUT)


def read_metrics(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_result(job_dir: Path) -> Result:
    return Result.read(job_dir / "result.json")


def result_metrics(job_dir: Path) -> dict:
    """The parts of result.json that must not depend on interruptions (not wall times)."""
    result = read_result(job_dir)
    return {
        "test_metric": result.test_metric,
        "final_val_metric": result.final_val_metric,
        "best_val_metric": result.best_val_metric,
        "best_val_step": result.best_val_step,
        "test_metric_at_best_val": result.test_metric_at_best_val,
        "steps": result.steps,
        "status": result.status,
    }
