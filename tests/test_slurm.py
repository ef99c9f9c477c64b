"""Sweeps through `hydra/launcher=slurm` on a real Slurm cluster: the one-node cluster that
scripts/slurm_local.sh brings up on this machine (`.ci/run` does so before running these tests).

    sudo scripts/slurm_local.sh && python -m pytest -m slurm
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mainproc import command, env, read_metrics, read_result, result_metrics, run_main

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    if shutil.which("sinfo") is None:
        pytest.fail("Slurm is not installed: run scripts/slurm_local.sh (as root) first")
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    states = state.stdout.split()
    if state.returncode != 0 or not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        detail = f"{state.stdout.strip()} {state.stderr.strip()}"
        pytest.fail(f"no Slurm node takes jobs ({detail}): run scripts/slurm_local.sh")


def squeue(name: str) -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %t"], capture_output=True, text=True, timeout=30)
    return [tuple(line.split()) for line in out.stdout.splitlines() if line.strip()]  # type: ignore[misc]


def test_slurm_sweep_every_job_finishes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_main(
        [
            "hydra/launcher=slurm",
            "dataset=diabetes,digits",
            "method=ce",
            "seed=0",
            "dataset.steps=50",
            "logger=wandb",
            "logger.mode=offline",
            "runtime.progress=false",
            f"hydra.sweep.dir={sweep}",
        ],  # fmt: skip
        multirun=True,
        timeout=600,
        check=True,
    )
    jobs = sorted(p.parent for p in sweep.glob("*/config_resolved.yaml"))
    assert len(jobs) == 2, list(sweep.iterdir())
    for job in jobs:
        result = read_result(job)
        assert result.status == "done", result.error
        assert result.steps == 50
        assert result.threads == 1  # Slurm's cpus_per_task from conf/hydra/launcher/slurm.yaml
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1  # one W&B run per job


def test_preempted_job_is_requeued_into_its_folder_and_resumes(tmp_path: Path) -> None:
    """Slurm's warning signal mid-run: the job checkpoints, submitit requeues it, and the requeued
    job resumes in the same folder and ends exactly like an uninterrupted run."""
    job = ["dataset=digits", "method=ce", "seed=0", "logger=none", "runtime.progress=false", "dataset.steps=1500",
           "checkpoint.every=100", "dataset.eval_interval=50"]  # fmt: skip
    reference = tmp_path / "reference"
    run_main(
        [*job, "runtime.threads=1", f"hydra.run.dir={reference}"], check=True
    )  # Slurm jobs get 1 thread (cpus_per_task)

    name = f"adalfl-preempt-{os.getpid()}"
    sweep = tmp_path / "sweep"
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115
    submitter = subprocess.Popen(
        command(
            [*job, "hydra/launcher=slurm", f"hydra.launcher.name={name}", f"hydra.sweep.dir={sweep}"], multirun=True
        ),  # fmt: skip
        cwd=Path(__file__).resolve().parents[1],
        env=env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        job_id, metrics = None, None
        while time.monotonic() < deadline:  # wait until the job is past its third checkpoint
            found = list(sweep.glob("*/metrics.jsonl"))
            if found and '"step": 350,' in found[0].read_text():
                metrics = found[0]
                break
            assert submitter.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.1)
        assert metrics is not None, "the Slurm job did not start in time"
        queue = squeue(name)
        assert queue and queue[0][1] == "R", queue
        job_id = queue[0][0]
        # What Slurm sends before a time limit (--signal=USR2@signal_delay_s) or a preemption.
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        while time.monotonic() < deadline:
            states = [s for _, s in squeue(name)]
            if states == ["PD"]:
                # Slurm holds a requeued job for a while (BeginTime); release it now.
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"job {job_id} was not requeued: {squeue(name)}")
        submitter.wait(timeout=max(10.0, deadline - time.monotonic()))
    finally:
        if submitter.poll() is None:
            submitter.kill()
            subprocess.run(["scancel", "-n", name], timeout=30)
        log.close()
    output = (tmp_path / "sweep.log").read_text()
    assert submitter.returncode == 0, output[-3000:]
    job_dir = metrics.parent
    assert [p.parent for p in sweep.glob("*/result.json")] == [job_dir]  # the same folder, not a new one
    main_log = (job_dir / "main.log").read_text()
    assert "received SIGUSR2" in main_log and "resuming from" in main_log
    assert read_metrics(job_dir) == read_metrics(reference)
    assert result_metrics(job_dir) == result_metrics(reference)
