"""Sweeps through the real CLI, in a subprocess, with temporary output folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from omegaconf import OmegaConf

from adalfl.sweep import report
from adalfl.sweep.resolvers import MAX_NAME, SAFE_CHARS, job_subdir
from helpers import REPO
from mainproc import run_main

TINY = ["dataset.steps=30", "dataset.eval_interval=15", "logger=none", "checkpoint.every=0"]


def test_basic_sweep_names_job_folders_from_overrides(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_main(
        ["-m", "dataset=diabetes,digits", "method=ce", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
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


def _lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_each_failed_job_reports_itself_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """A bad value: one line naming the job; a genuine failure (here a diverging model, not a user
    error) after it: its traceback, which Hydra alone would hide behind the first failure."""
    sweep = tmp_path / "sweep"
    proc = run_main(
        ["-m", "dataset=diabetes", "method=ce", "optimizer.lr=-1,1000000.0,0.001", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode != 0  # the sweep reports the failure
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert len(results) == 3
    statuses = {name.split("optimizer.lr=")[1].split(",")[0]: r["status"] for name, r in results.items()}
    assert statuses == {"-1": "failed", "1000000.0": "failed", "0.001": "done"}

    assert _lines_with(proc.stderr, "optimizer.lr must be positive") == [
        f"error: job #0 (dataset=diabetes method=ce optimizer.lr=-1 {' '.join(TINY)}): "
        "optimizer.lr must be positive, got -1.0"
    ], proc.stderr
    assert _lines_with(proc.stderr, "failed with an unexpected error:")[0].startswith("error: job #1 (dataset=diabetes")
    assert proc.stderr.count("Traceback") == 1, proc.stderr  # the bug's, not the bad value's
    assert "NonFiniteLossError: base loss became" in proc.stderr
    assert "results.md lists them all" in proc.stderr  # Hydra's last line: one line, not a traceback


def test_parallel_sweep_reports_missing_data_in_one_line(tmp_path: Path) -> None:
    """The README's sweep on a fresh machine, under the joblib launcher (jobs in worker processes):
    the missing dataset is one line, the AdaLFL job that can run finishes without PyTorch's warnings."""
    empty, sweep = tmp_path / "empty", tmp_path / "sweep"
    empty.mkdir()
    proc = run_main(
        [
            "-m",
            "hydra/launcher=local",
            "hydra.launcher.n_jobs=2",
            "dataset=digits,cifar10",
            "method=adalfl",
            f"dataset.root={empty}",
            "offline.steps=5",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    missing = _lines_with(proc.stderr, "CIFAR-10 not found")
    assert len(missing) == 1 and missing[0].startswith("error: job #1 (dataset=cifar10 method=adalfl "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "FutureWarning" not in proc.stderr
    statuses = {
        json.loads(p.read_text())["dataset"]: json.loads(p.read_text())["status"] for p in sweep.glob("*/result.json")
    }
    assert statuses == {"digits": "done", "cifar10": "failed"}


@pytest.mark.parametrize(
    "overrides",
    [
        "dataset.root=/data/x,seed=0",
        "dataset.root=../up,seed=0",
        "~dataset.root,seed=0",
        "-x=1",
        ".x=1",
        r"model.name=a\,b,seed=0",  # Hydra's escape of a quoted comma
        "model.name=a b:c*d?e|f<g>h\"i'j$k`l&m;n(o)p{q}r[s]t!u#v%w^x@y\\z\n",
        "model.name=héllo",
    ],
)
def test_job_subdir_is_one_safe_path_component(overrides: str) -> None:
    name = job_subdir(overrides, 3)
    assert set(name) <= SAFE_CHARS | {"%"}  # no "/", nothing a shell or file system treats specially
    assert not name.startswith((".", "-")) and len(name) <= MAX_NAME
    assert unquote(name) == overrides  # encoded, not altered: two jobs cannot share a folder
    assert job_subdir(overrides, 5) == name  # stable: a rerun finds the folder again


def test_job_subdir_keeps_plain_names_and_numbers_empty_ones() -> None:
    assert (
        job_subdir("dataset=digits,method=ce,seed=1", 0) == "dataset=digits,method=ce,seed=1"
    )  # old sweeps still match
    assert job_subdir("+experiment=smoke,dataset.steps=20", 0) == "+experiment=smoke,dataset.steps=20"
    assert job_subdir("", 7) == "job7"


def test_long_job_subdir_is_shortened_with_a_stable_hash() -> None:
    names = [job_subdir(f"dataset.root=/{'d' * 200}/{tail},seed=0", 0) for tail in ("a", "b")]
    assert all(len(n) <= MAX_NAME and "/" not in n and n.startswith("dataset.root=%2Fddd") for n in names)
    assert names[0] != names[1]  # differing only past the cut
    assert names == [job_subdir(f"dataset.root=/{'d' * 200}/{tail},seed=0", 1) for tail in ("a", "b")]
    cut_in_escape = job_subdir("k=" + "/" * 300, 0)  # the kept part never ends inside a %XX escape
    assert cut_in_escape.split(",sha256=")[0].endswith("%2F")


def test_job_folders_with_paths_sit_in_the_sweep_folder_and_rerun_skips_them(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    roots = [tmp_path / "data a", tmp_path / "data-b"]  # digits is bundled: any root works
    args = [
        "-m",
        "dataset=digits",
        "method=ce",
        f"dataset.root='{roots[0]}','{roots[1]}'",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_main(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [hydra.parent for hydra in sweep.rglob(".hydra")]
    assert len(jobs) == 2 and all(job.parent == sweep for job in jobs), jobs
    assert {OmegaConf.load(job / "config_resolved.yaml").dataset.root for job in jobs} == {str(r) for r in roots}
    built = report.build(sweep)
    [row] = built.cells.values()  # one dataset x model row, whatever digits' default model is
    assert len(row["ce"].values) == 2
    assert not built.failed and not built.unfinished and not built.missing
    finished = {job: (job / "result.json").read_bytes() for job in jobs}

    again = run_main(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        len(_lines_with(again.stdout + again.stderr, "already holds a finished result of this config; skipping")) == 2
    )
    assert {job: (job / "result.json").read_bytes() for job in jobs} == finished
    assert sorted(hydra.parent for hydra in sweep.rglob(".hydra")) == sorted(jobs)


def test_two_sweeps_started_together_do_not_collide(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [
        sys.executable,
        str(REPO / "main.py"),
        "-m",
        "dataset=diabetes",
        "method=ce",
        "dataset.steps=5",
        "logger=none",
        "checkpoint.every=0",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    sweeps = list((tmp_path / "multirun").glob("*/*"))
    assert len(sweeps) == 2, sweeps
    assert all(len(list(s.glob("*/result.json"))) == 1 for s in sweeps)
