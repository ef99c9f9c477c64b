"""A job folder is reused only by the same job, and written by one process at a time: a changed
config is refused (finished result or checkpoint), restart=true sets the old job aside, and a
second process in a live job's folder gets one line and exit status 1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from adalfl.app import USER_ERRORS, run
from adalfl.methods.base import FixedLossMethod
from adalfl.train.checkpoint import Checkpointer
from adalfl.train.folder import (
    ConfigMismatch,
    FolderInUse,
    config_identity,
    differences,
    fingerprint,
    folder_lock,
)

from helpers import REPO, tiny
from mainproc import run_main

FAST = (
    "model.widths=[32,32]",
    "runtime.threads=1",
    "dataset.steps=30",
    "dataset.eval_interval=10",
    "checkpoint.every=10",
)


def job(*overrides: str):
    return tiny(*FAST, *overrides)


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    calls = {"n": 0}
    original = FixedLossMethod.train_step

    def train_step(self, job, model, optimizer):
        calls["n"] += 1
        if calls["n"] == step:
            raise RuntimeError("crash")
        return original(self, job, model, optimizer)

    monkeypatch.setattr(FixedLossMethod, "train_step", train_step)


# --- identity ---------------------------------------------------------------------------------


def test_identity_leaves_out_run_time_switches_only() -> None:
    base = config_identity(job())
    switched = job(
        "runtime.threads=2",
        "runtime.device=cpu",
        "runtime.progress=true",
        "checkpoint.every=3",
        "checkpoint.resume=false",
        "logger=wandb",
        "logger.mode=disabled",
        "logger.project=x",
        "runtime.cpu_memory=system",
        "runtime.channels_last=false",
        "runtime.deterministic=true",
        "restart=true",
        "dataset.root=/elsewhere",
    )
    assert config_identity(switched) == base
    assert fingerprint(config_identity(switched)) == fingerprint(base)
    for changed in ("optimizer.lr=0.1", "seed=1", "dataset.steps=31", "model.widths=[32,16]", "offline.steps=3"):
        other = config_identity(job(changed))
        assert fingerprint(other) != fingerprint(base), changed
        key = changed.split("=")[0]
        assert [d.split(" was ")[0] for d in differences(base, other)] == [key], changed
    assert differences({"a": 1}, {"a": 1, "b": [2]}) == ["b was absent, now [2]"]


# --- a finished job ---------------------------------------------------------------------------


def test_finished_job_rerun_with_another_config_is_refused_and_kept(job_dir: Path) -> None:
    first = run(job(), out_dir=job_dir)
    before = {p.name: p.read_bytes() for p in job_dir.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(ConfigMismatch) as refused:
        run(job("optimizer.lr=0.1"), out_dir=job_dir)
    message = str(refused.value)
    assert "\n" not in message
    assert "a finished job" in message and "optimizer.lr was 0.01, now 0.1" in message
    assert "restart=true" in message and "another folder" in message
    assert {p.name: p.read_bytes() for p in job_dir.iterdir() if p.is_file() and p.name != ".lock"} == before
    # The same job with other run-time switches is the same job: skipped, same result.
    assert run(job("runtime.threads=2", "checkpoint.every=0"), out_dir=job_dir) == first
    assert result(job_dir)["config_identity"]["optimizer.lr"] == 0.01
    assert result(job_dir)["config_fingerprint"] == fingerprint(config_identity(job()))


def test_restart_sets_the_old_job_aside_and_runs_the_new_config(job_dir: Path) -> None:
    run(job(), out_dir=job_dir)
    old = result(job_dir)
    run(job("optimizer.lr=0.1", "restart=true"), out_dir=job_dir)
    new = result(job_dir)
    assert new["status"] == "done" and new["config_identity"]["optimizer.lr"] == 0.1
    (aside,) = (job_dir / "replaced").iterdir()
    assert json.loads((aside / "result.json").read_text()) == old
    assert (aside / "metrics.jsonl").exists() and (aside / "checkpoint.pt").exists()
    # restart=true on a finished job of the same config runs it again, from scratch.
    (job_dir / "metrics.jsonl").write_text("")
    run(job("optimizer.lr=0.1", "restart=true"), out_dir=job_dir)
    assert len((job_dir / "metrics.jsonl").read_text().splitlines()) > 0
    assert len(list((job_dir / "replaced").iterdir())) == 2


# --- a checkpoint -----------------------------------------------------------------------------


@pytest.mark.parametrize("result_json", ["failed", "none"], ids=["crashed", "killed"])
def test_checkpoint_of_another_config_is_refused_not_resumed(job_dir: Path, monkeypatch, result_json: str) -> None:
    with monkeypatch.context() as patch:
        crash_at(patch, 25)
        with pytest.raises(RuntimeError, match="crash"):
            run(job(), out_dir=job_dir)
    if result_json == "none":  # SIGKILL: the job never wrote its result
        (job_dir / "result.json").unlink()
    checkpoint = (job_dir / "checkpoint.pt").read_bytes()
    assert Checkpointer(job_dir).load()["config_identity"] == config_identity(job())
    with pytest.raises(
        ConfigMismatch, match=r"a checkpoint \(step 20\) of another config \(optimizer.lr was 0.01, now 0.1\)"
    ):
        run(job("optimizer.lr=0.1"), out_dir=job_dir)
    assert (job_dir / "checkpoint.pt").read_bytes() == checkpoint
    # The same config resumes it; a changed run-time switch does not matter.
    run(job("runtime.threads=2"), out_dir=job_dir)
    assert result(job_dir)["status"] == "done" and result(job_dir)["steps"] == 30


def test_loop_refuses_a_checkpoint_of_another_config_on_its_own(job_dir: Path, monkeypatch) -> None:
    """Every caller of fit() is guarded, not only adalfl.app."""
    from adalfl.app import build_job, build_method
    from adalfl.track.metrics import Tracker
    from adalfl.train.loop import fit

    with monkeypatch.context() as patch:
        crash_at(patch, 25)
        with pytest.raises(RuntimeError):
            run(job(), out_dir=job_dir)
    cfg = job("optimizer.lr=0.1")
    built, model = build_job(cfg, job_dir, __import__("torch").device("cpu"), Tracker(job_dir))
    with pytest.raises(ConfigMismatch, match="optimizer.lr was 0.01, now 0.1"):
        fit(built, model, build_method(cfg))


def test_results_from_before_identities_are_checked_against_config_resolved(job_dir: Path) -> None:
    first = run(job(), out_dir=job_dir)
    legacy = result(job_dir)
    del legacy["config_identity"], legacy["config_fingerprint"]
    (job_dir / "result.json").write_text(json.dumps(legacy))
    # config_resolved.yaml of an older version lacks keys added since: those are not differences.
    saved = OmegaConf.load(job_dir / "config_resolved.yaml")
    with open_dict(saved):
        del saved.logger
        saved.method.pop("name")
    OmegaConf.save(saved, job_dir / "config_resolved.yaml")
    assert run(job(), out_dir=job_dir) == first
    with pytest.raises(ConfigMismatch, match="optimizer.lr was 0.01, now 0.1"):
        run(job("optimizer.lr=0.1"), out_dir=job_dir)


def test_a_folder_from_before_the_runtime_node_is_recognised(job_dir: Path) -> None:
    """The run-time switches sat at the config's root before the `runtime` node: identities never
    held them (so those recorded then are the same, fingerprints too), and an older folder's
    config_resolved.yaml, read when its result.json records no identity, has them at the root."""
    first = run(job(), out_dir=job_dir)
    legacy = result(job_dir)
    assert legacy["config_identity"] == config_identity(job("runtime.threads=2", "runtime.device=cpu"))
    del legacy["config_identity"], legacy["config_fingerprint"]
    (job_dir / "result.json").write_text(json.dumps(legacy))
    saved = OmegaConf.load(job_dir / "config_resolved.yaml")
    with open_dict(saved):
        for key, value in saved.pop("runtime").items():
            saved[key] = value
        saved.threads, saved.device = "3", "cuda"
    OmegaConf.save(saved, job_dir / "config_resolved.yaml")
    assert run(job("runtime.threads=2"), out_dir=job_dir) == first


# --- one writer -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(job_dir: Path) -> None:
    with folder_lock(job_dir):
        with pytest.raises(FolderInUse, match=r"is in use by a running job \(pid \d+ on .+, started "):
            run(job(), out_dir=job_dir)
        assert not (job_dir / "result.json").exists() and not (job_dir / "metrics.jsonl").exists()
    run(job(), out_dir=job_dir)  # released when the holder is done
    assert result(job_dir)["status"] == "done"
    assert FolderInUse in USER_ERRORS and ConfigMismatch in USER_ERRORS  # one line from main.py


def test_the_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    """A holder that dies (SIGKILL: no clean-up at all) never leaves a stale lock."""
    code = (
        "import sys, time; from pathlib import Path; from adalfl.train.folder import folder_lock\n"
        "with folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=f"pid {child.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        child.kill()
        child.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            with folder_lock(tmp_path):
                break
        except FolderInUse:
            assert time.monotonic() < deadline, "the lock outlived its process"
            time.sleep(0.05)


def test_main_prints_one_line_for_a_folder_in_use(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    with folder_lock(folder):
        proc = run_main(["method=ce", "logger=none", *FAST, f"hydra.run.dir={folder}"], cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder} is in use by a running job"), proc.stderr
    assert not (folder / "result.json").exists()
