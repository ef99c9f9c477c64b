"""Sweeps through the real CLI, in a subprocess, with temporary output folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_main

TINY = ["dataset.steps=30", "dataset.eval_interval=15", "logger=none", "checkpoint.every=0"]


def test_basic_sweep_names_job_folders_from_overrides(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_main(["-m", "dataset=diabetes,digits", "method=ce", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    swept = {"dataset", "method", "seed"}
    names = {p.parent.name for p in sweep.glob("*/result.json")}
    # Hydra sorts the overrides in the name; keep only the swept ones
    assert {",".join(kv for kv in name.split(",") if kv.split("=")[0] in swept) for name in names} == {
        f"dataset={d},method=ce,seed={s}" for d in ("diabetes", "digits") for s in (0, 1)
    }
    for path in sweep.glob("*/result.json"):
        result = json.loads(path.read_text())
        assert result["status"] == "done"
        name = path.parent.name.split(",")
        assert f"dataset={result['dataset']}" in name and f"seed={result['seed']}" in name


def test_failed_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_main(["-m", "dataset=diabetes", "method=ce", "optimizer.lr=-1,0.001", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode != 0  # the sweep reports the failure
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert len(results) == 2
    statuses = {("optimizer.lr=-1" in name): r["status"] for name, r in results.items()}
    assert statuses == {True: "failed", False: "done"}


def test_two_sweeps_started_together_do_not_collide(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(REPO / "main.py"), "-m", "dataset=diabetes", "method=ce", "dataset.steps=5", "logger=none", "checkpoint.every=0"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    sweeps = list((tmp_path / "multirun").glob("*/*"))
    assert len(sweeps) == 2, sweeps
    assert all(len(list(s.glob("*/result.json"))) == 1 for s in sweeps)
