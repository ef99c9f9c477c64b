"""Checkpoints and resume: a job stopped at any moment (SIGKILL, a crash, a scheduler's stop signal)
and started again in the same folder ends exactly as an uninterrupted run; damaged checkpoints are
detected and skipped; the parallel local launcher runs sweeps."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from adalfl import preemption
from adalfl.app import run
from adalfl.configstore import register_configs
from adalfl.methods.base import FixedLossMethod
from adalfl.sweep.resolvers import register_resolvers
from adalfl.train import checkpoint as ckpt
from mainproc import REPO, read_metrics, read_result, result_metrics, run_main, start_main

# Small, but long enough to hold several checkpoints: 300 steps of Digits, one checkpoint every 100.
# One thread: the in-process jobs are tiny, and extra threads only cost when other work shares the CPUs.
JOB = ["dataset=digits", "method=ce", "logger=none", "runtime.progress=false", "runtime.threads=1", "dataset.steps=300",
       "checkpoint.every=100"]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def compose_job(overrides: list[str]) -> DictConfig:
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


class Crash(RuntimeError):
    """Stands in for a failure in the middle of training."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the next job fail inside its ``step``-th base step."""
    calls = {"n": 0}
    original = FixedLossMethod.train_step

    def train_step(self, job, model, optimizer):
        calls["n"] += 1
        if calls["n"] == step:
            raise Crash(f"crash in step {step}")
        return original(self, job, model, optimizer)

    monkeypatch.setattr(FixedLossMethod, "train_step", train_step)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of JOB: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference")
    run(compose_job(JOB), out)
    return out


def assert_same_as(reference: Path, job_dir: Path) -> None:
    assert read_metrics(job_dir) == read_metrics(reference)
    assert result_metrics(job_dir) == result_metrics(reference)
    assert result_metrics(job_dir)["status"] == "done"


def test_crash_then_rerun_resumes_identically(reference: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    cfg = compose_job(JOB)
    with monkeypatch.context() as patch:
        crash_at(patch, 250)
        with pytest.raises(Crash):
            run(cfg, tmp_path)
    assert read_result(tmp_path).status == "failed"
    assert max(r["step"] for r in read_metrics(tmp_path)) == 240  # records past the checkpoint at 200
    with caplog.at_level(logging.INFO, logger="adalfl"):
        run(cfg, tmp_path)
    assert "resuming from" in caplog.text and "at step 200/300" in caplog.text
    assert_same_as(reference, tmp_path)


def test_corrupt_checkpoint_falls_back_to_previous(reference: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    cfg = compose_job(JOB)
    with monkeypatch.context() as patch:
        crash_at(patch, 250)
        with pytest.raises(Crash):
            run(cfg, tmp_path)
    newest = tmp_path / "checkpoint.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the payload: still unpickles, wrong weights
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="adalfl"):
        run(cfg, tmp_path)
    assert "checksum mismatch" in caplog.text
    assert "resuming from the previous checkpoint checkpoint.prev.pt" in caplog.text
    assert "at step 100/300" in caplog.text
    assert (tmp_path / "checkpoint.pt.corrupt").exists()  # kept for inspection, out of the rotation
    assert_same_as(reference, tmp_path)


def test_no_intact_checkpoint_restarts_from_scratch(reference: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    cfg = compose_job(JOB)
    with monkeypatch.context() as patch:
        crash_at(patch, 250)
        with pytest.raises(Crash):
            run(cfg, tmp_path)
    newest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a partial write (e.g. a full disk)
    previous.write_bytes(b"garbage")
    with caplog.at_level(logging.INFO, logger="adalfl"):
        run(cfg, tmp_path)
    assert "no intact checkpoint" in caplog.text and "restarts from scratch" in caplog.text
    assert "resuming from" not in caplog.text
    assert_same_as(reference, tmp_path)


def test_checkpoint_decode_rejects_damage() -> None:
    data = ckpt.encode({"x": 1})
    assert ckpt.decode(data)["x"] == 1
    for bad in (data[:-1], data[:20], b"PK" + data[2:], data[:-5] + b"\x00" * 5):
        with pytest.raises(ckpt.CorruptCheckpoint):
            ckpt.decode(bad)


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM], ids=["submitit-USR2", "plain-SIGTERM"])
def test_stop_signal_checkpoints_at_the_current_step(reference: Path, tmp_path: Path, monkeypatch, signum) -> None:
    """A stop signal arrives mid-step: the loop finishes the step, writes a checkpoint there, then
    lets the signal take effect. SIGUSR2 stands for submitit's handler (requeue, then exit);
    SIGTERM with no handler ends the job (through SystemExit, so result.json says so)."""
    handled: list[int] = []

    def scheduler_handler(sig, frame):
        handled.append(sig)
        raise SystemExit(-1)

    handler = scheduler_handler if signum == signal.SIGUSR2 else signal.SIG_DFL
    previous = signal.signal(signum, handler)
    try:
        cfg = compose_job(JOB)
        calls = {"n": 0}
        original = FixedLossMethod.train_step

        def train_step(self, job, model, optimizer):
            calls["n"] += 1
            if calls["n"] == 137:
                os.kill(os.getpid(), signum)
            return original(self, job, model, optimizer)

        with monkeypatch.context() as patch:
            patch.setattr(FixedLossMethod, "train_step", train_step)
            with pytest.raises(SystemExit) as stopped:
                run(cfg, tmp_path)
        assert handled == ([signum] if handler is scheduler_handler else [])
        assert stopped.value.code == (-1 if handler is scheduler_handler else 128 + signum)
        assert signal.getsignal(signum) is handler  # restored after the job
    finally:
        signal.signal(signum, previous)
    assert read_result(tmp_path).status == "interrupted"
    state = ckpt.Checkpointer(tmp_path).load()
    assert state is not None and state["progress"]["step"] == 137
    assert not preemption.requested()
    run(compose_job(JOB), tmp_path)
    assert_same_as(reference, tmp_path)


def test_sigkill_mid_run_then_restart_gives_identical_metrics(tmp_path: Path) -> None:
    """A real process, killed without warning between two checkpoints, then started again."""
    job = ["dataset=digits", "method=ce", "logger=none", "runtime.progress=false", "runtime.threads=1", "dataset.steps=700",
           "checkpoint.every=100", "dataset.eval_interval=50"]  # fmt: skip
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_main([*job, f"hydra.run.dir={reference}"], check=True)

    child = start_main([*job, f"hydra.run.dir={killed}"], tmp_path / "killed.log")
    deadline = time.monotonic() + 120
    metrics = killed / "metrics.jsonl"
    try:
        # Kill once past the third checkpoint (step 300) and mid-way to the next one.
        while time.monotonic() < deadline and child.poll() is None:
            if metrics.exists() and '"step": 350,' in metrics.read_text():
                break
            time.sleep(0.02)
        assert child.poll() is None, "the job finished before it could be killed; raise dataset.steps"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert not (killed / "result.json").exists() or read_result(killed).status != "done"
    assert max(r["step"] for r in read_metrics(killed)) >= 350

    proc = run_main([*job, f"hydra.run.dir={killed}"], check=True)
    assert "resuming from" in proc.stdout + proc.stderr + (killed / "main.log").read_text()
    assert read_metrics(killed) == read_metrics(reference)
    assert result_metrics(killed) == result_metrics(reference)


def test_local_launcher_runs_a_sweep_with_two_workers(tmp_path: Path) -> None:
    """hydra/launcher=local: two workers, each job in its own folder with one W&B run of its own,
    each limited to its share of the cores."""
    sweep = tmp_path / "sweep"
    run_main(
        [
            "hydra/launcher=local",
            "hydra.launcher.n_jobs=2",
            "dataset=diabetes,digits",
            "method=ce",
            "logger=wandb",
            "logger.mode=offline",
            "runtime.progress=false",
            "dataset.steps=100",
            f"hydra.sweep.dir={sweep}",
        ],  # fmt: skip
        multirun=True,
        check=True,
    )
    jobs = sorted(p.parent for p in sweep.glob("*/result.json"))
    assert len(jobs) == 2 and "dataset=diabetes" in jobs[0].name and "dataset=digits" in jobs[1].name
    run_ids = set()
    for job in jobs:
        result = read_result(job)
        assert result.status == "done", result.error
        assert result.threads == max(1, len(os.sched_getaffinity(0)) // 2)
        run_id = (job / ".wandb_run_id").read_text().strip()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(run_id), runs
        run_ids.add(run_id)
    assert len(run_ids) == 2


# --- offline phases ---------------------------------------------------------------------------
# Algorithms 1/3 checkpoint every checkpoint.every meta steps, the CMA-ES search after every
# generation; on a stop signal either checkpoints after the current meta step or candidate.

OFFLINE = ["dataset=digits", "logger=none", "runtime.progress=false", "runtime.threads=1", "model.widths=[32,32]", "dataset.steps=20",
           "dataset.eval_interval=10", "dataset.log_interval=5", "offline.steps=40", "checkpoint.every=10",
           "offline.population=4", "offline.generations=3", "offline.partial_steps=5"]  # fmt: skip
OFFLINE_METHODS = {"adalfl": ["method=adalfl"], "ml3": ["method=ml3"], "metalr": ["method=metalr"],
                   "taylorglo-gradient": ["method=taylorglo", "method.search=gradient"],
                   "taylorglo-cmaes": ["method=taylorglo"]}  # fmt: skip


def offline_job(name: str, *extra: str) -> DictConfig:
    return compose_job([*OFFLINE, *OFFLINE_METHODS[name], *extra])


@pytest.fixture(scope="module")
def offline_references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs, one per offline method."""
    out = {}
    for name in OFFLINE_METHODS:
        out[name] = tmp_path_factory.mktemp(f"reference-{name}")
        run(offline_job(name), out[name])
    return out


def interrupt_offline_at(patch: pytest.MonkeyPatch, name: str, unit: int, action) -> None:
    """Run ``action`` at the start of the ``unit``-th unit of offline work: a meta step, or (CMA-ES)
    a candidate's partial training, counting x0 as the first."""
    from adalfl.methods import metalearning, taylorglo

    calls = {"n": 0}
    if name == "taylorglo-cmaes":
        original_call = taylorglo.PartialTraining.__call__

        def candidate(self, loss):
            calls["n"] += 1
            if calls["n"] == unit:
                action()
            return original_call(self, loss)

        patch.setattr(taylorglo.PartialTraining, "__call__", candidate)
        return
    original_step = metalearning.meta_step

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == unit:
            action()
        return original_step(*args, **kwargs)

    patch.setattr(metalearning, "meta_step", step)


def _raise_crash() -> None:
    raise Crash("crash in the offline phase")


@pytest.mark.parametrize("name", list(OFFLINE_METHODS))
def test_offline_phase_crash_resumes_from_its_last_checkpoint(name: str, offline_references, tmp_path, caplog) -> None:
    """A failure (or SIGKILL) in the middle of an offline phase loses at most one checkpoint interval:
    the rerun goes on from the last offline checkpoint and ends as the uninterrupted run."""
    unit = 7 if name == "taylorglo-cmaes" else 25  # mid generation 2 / between the checkpoints at 20 and 30
    with pytest.MonkeyPatch.context() as patch:
        interrupt_offline_at(patch, name, unit, _raise_crash)
        with pytest.raises(Crash):
            run(offline_job(name), tmp_path)
    state = ckpt.Checkpointer(tmp_path).load()
    assert state is not None and not state["progress"]["offline_done"]
    method_state = state["method"]
    if name == "taylorglo-cmaes":
        search = method_state["search"]["cmaes"]
        assert search["generation"] == 1 and search["values"] == []  # checkpointed after generation 1
    else:
        offline = (
            method_state["search"]["gradient"]
            if name.startswith("taylorglo")
            else (method_state["search"] if name == "ml3" else method_state["offline"])
        )
        assert offline["step"] == 20
    with caplog.at_level(logging.INFO, logger="adalfl"):
        run(offline_job(name), tmp_path)
    assert "at the offline phase" in caplog.text
    assert_same_as(offline_references[name], tmp_path)
    wall = read_result(tmp_path).wall_time_s
    assert wall.total >= wall.offline + wall.train + wall.eval - 1e-6  # summed over both attempts


@pytest.mark.parametrize("name", ["adalfl", "taylorglo-cmaes"])
def test_sigterm_in_an_offline_phase_checkpoints_at_once(name: str, offline_references, tmp_path) -> None:
    """SIGTERM mid-phase: the job checkpoints after the current meta step, or abandons the current
    CMA-ES candidate (redone on resume), and stops; with checkpoint.every far away, the checkpoint
    can only come from the signal. The rerun ends as the uninterrupted run."""
    unit = 6 if name == "taylorglo-cmaes" else 13
    with pytest.MonkeyPatch.context() as patch:
        interrupt_offline_at(patch, name, unit, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(SystemExit) as stopped:
            run(offline_job(name, "checkpoint.every=1000"), tmp_path)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert read_result(tmp_path).status == "interrupted"
    state = ckpt.Checkpointer(tmp_path).load()
    assert state is not None and not state["progress"]["offline_done"]
    if name == "taylorglo-cmaes":
        search = state["method"]["search"]["cmaes"]
        # x0 and 4 candidates of generation 1 scored; the 6th evaluation (generation 2's first) was abandoned
        assert search["generation"] == 1 and len(search["candidates"]) == 4 and search["values"] == []
    else:
        assert state["method"]["offline"]["step"] == 13  # the step under way when the signal came
    run(offline_job(name), tmp_path)
    assert_same_as(offline_references[name], tmp_path)


def test_phase_timer_carries_times_across_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    from adalfl import utils

    now = {"t": 0.0}
    monkeypatch.setattr(utils.time, "perf_counter", lambda: now["t"])
    first = utils.PhaseTimer()
    with first.phase("offline"):
        now["t"] = 5.0
        saved = first.state_dict()  # a checkpoint in the middle of the phase
    assert saved == {"totals": {"offline": 5.0}, "total": 5.0}
    now["t"] = 100.0  # the next attempt starts later; what the first did after its checkpoint is redone
    second = utils.PhaseTimer()
    second.load_state_dict(saved)
    with second.phase("offline"):
        now["t"] = 102.0
    now["t"] = 103.0
    assert second.totals == {"offline": 7.0} and second.total() == 8.0


def test_sigkill_in_the_offline_phase_then_restart_gives_identical_metrics(tmp_path: Path) -> None:
    """A real process killed without warning in the middle of Algorithm 1, then started again."""
    job = ["dataset=digits", "method=adalfl", "logger=none", "runtime.progress=false", "runtime.threads=1", "model.widths=[32,32]",
           "dataset.steps=20", "dataset.eval_interval=10", "offline.steps=400", "checkpoint.every=50"]  # fmt: skip
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_main([*job, f"hydra.run.dir={reference}"], check=True)
    child = start_main([*job, f"hydra.run.dir={killed}"], tmp_path / "killed.log")
    deadline = time.monotonic() + 120
    metrics = killed / "metrics.jsonl"
    try:
        while time.monotonic() < deadline and child.poll() is None:  # past the checkpoint at meta step 100
            if metrics.exists() and '"phase": "offline", "step": 130,' in metrics.read_text():
                break
            time.sleep(0.02)
        assert child.poll() is None, "the job finished before it could be killed; raise offline.steps"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert not (killed / "result.json").exists()
    assert not ckpt.Checkpointer(killed).load()["progress"]["offline_done"]
    proc = run_main([*job, f"hydra.run.dir={killed}"], check=True)
    assert "at the offline phase" in proc.stdout + proc.stderr + (killed / "main.log").read_text()
    assert read_metrics(killed) == read_metrics(reference)
    assert result_metrics(killed) == result_metrics(reference)
