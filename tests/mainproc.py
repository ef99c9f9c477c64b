"""Start ``main.py`` in a child process, as a user would: ``run_main`` (to completion) for every test
that runs main.py, ``start_main`` for the ones that need the live process (SIGKILL, Slurm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from helpers import REPO

from adalfl.result import Result


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This checkout's sources first on the path (also for workers the launchers start), W&B quiet."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    out.update(WANDB_SILENT="true", **(extra or {}))
    return out


def command(overrides: Sequence[str], multirun: bool = False) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), *(["-m"] if multirun else []), *overrides]


def run_main(
    args: Sequence[str],
    cwd: Path = REPO,
    timeout: float = 300,
    extra_env: Mapping[str, str] | None = None,
    *,
    multirun: bool = False,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """Run `python main.py [-m] <args>` in ``cwd`` as a user would, to completion, output captured.
    ``check``: fail the test with the child's output unless it exits 0 (otherwise the caller reads
    ``returncode``, for the tests of what a user sees when a job fails)."""
    proc = subprocess.run(
        command(args, multirun), cwd=cwd, env=env(extra_env), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, (
            f"main.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
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
