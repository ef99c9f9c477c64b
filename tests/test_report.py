"""Sweeps aggregate themselves: tables that match the job files, partial sweeps, skipped reruns."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from adalfl.result import Result, Status, WallTime
from adalfl.sweep import report

from helpers import REPO
from mainproc import run_main

SWEEP_ARGS = [
    "-m",
    "dataset=diabetes,digits",
    "method=ce",
    "seed=0,1",
    "dataset.steps=30",
    "dataset.eval_interval=15",
    "logger=none",
    "checkpoint.every=0",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    proc = run_main([*SWEEP_ARGS, f"hydra.sweep.dir={root / 'sweep'}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "sweep"


def _results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sweep.glob("*/result.json")]


def test_tables_match_the_job_files(sweep: Path) -> None:
    results = _results(sweep)
    assert len(results) == 4
    rows = {(r["dataset"], r["method"]): [] for r in results}
    for r in results:
        scale = 100 if r["metric_name"] == "error_rate" else 1
        rows[(r["dataset"], r["method"])].append(scale * r["test_metric"])
    with open(sweep / "results.csv", newline="") as handle:
        table = {(row["dataset"], row["method"]): row for row in csv.DictReader(handle)}
    assert set(table) == set(rows)
    for key, values in rows.items():
        assert float(table[key]["mean"]) == pytest.approx(statistics.fmean(values), rel=1e-5)
        assert float(table[key]["std"]) == pytest.approx(statistics.stdev(values), rel=1e-5)
        assert int(table[key]["n_finished"]) == 2
    md = (sweep / "results.md").read_text()
    digits = statistics.fmean(rows[("digits", "ce")])
    assert f"**{digits:.2f} ± {statistics.stdev(rows[('digits', 'ce')]):.2f} (n=2)**" in md
    assert "## Run time" in md and "Incomplete" not in md
    assert r"\textbf{" in (sweep / "results.tex").read_text()
    assert {p.name for p in (sweep / "figures").glob("*.png")} == {"curves_diabetes_mlp.png", "curves_digits_mlp.png"}
    assert not (sweep / "wandb").exists() and not (sweep / ".wandb_report_run_id").exists()  # logger=none: no W&B


def test_best_method_per_row_is_bold() -> None:
    cells = {("d", "m"): {"a": report.Cell([3.0, 5.0]), "b": report.Cell([1.0, 2.0]), "c": report.Cell([], failed=1)}}
    built = report.Report(
        Path("."), "t", {"error_rate"}, {("d", "m"): "error_rate"}, ["a", "b", "c"], cells, [], [], []
    )
    line = [row for row in report.markdown(built).splitlines() if row.startswith("| d |")][0]
    assert "**1.50 ± 0.71 (n=2)**" in line and "| 4.00 ± 1.41 (n=2) |" in line and "failed (n=0, 1 failed)" in line


def test_paired_comparison_matches_seeds_not_positions() -> None:
    ce = report.Cell([10.0, 12.0, 11.0], seeds=[0, 1, 2])
    adalfl = report.Cell([11.5, 9.0], seeds=[1, 0])  # seed 2 unfinished: left out of the pairing
    (pair,) = report.paired_with_baseline({"ce": ce, "adalfl": adalfl})
    assert (pair.method, pair.n, pair.wins) == ("adalfl", 2, 2)
    assert pair.mean_difference == pytest.approx(((9.0 - 10.0) + (11.5 - 12.0)) / 2)
    cells = {("d", "m"): {"ce": ce, "adalfl": adalfl}}
    built = report.Report(
        Path("."), "t", {"error_rate"}, {("d", "m"): "error_rate"}, ["ce", "adalfl"], cells, [], [], []
    )
    assert "| d | m | adalfl | 2 | -0.75 | 2/2 |" in report.markdown(built)


def test_partial_sweep_reports_what_is_missing(sweep: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    jobs = sorted(p.parent for p in partial.glob("*/result.json"))
    (jobs[0] / "result.json").unlink()  # a job that died
    shutil.rmtree(jobs[-1])  # a job that never started
    proc = subprocess.run(
        [sys.executable, "-m", "adalfl.report", str(partial)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| dataset | model | ce |" in proc.stdout  # the Markdown table is printed
    md = (partial / "results.md").read_text()
    assert f"not finished: `{jobs[0].name}`" in md
    assert md.count("not started: `") == 1
    missing = md.split("not started: `")[1].split("`")[0]
    assert set(missing.split(",")) >= {
        f"dataset={d}" for d in ("diabetes", "digits") if f"dataset={d}," in jobs[-1].name
    }
    assert "(n=1)" in md


def test_rerun_skips_finished_jobs(sweep: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.jsonl")}
    proc = run_main([*SWEEP_ARGS, f"hydra.sweep.dir={sweep}"], cwd=sweep.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.jsonl")} == before
    assert (proc.stdout + proc.stderr).count("already holds a finished result") == 4


# --- grouping: only seeds are pooled ----------------------------------------------------------


def _fake_job(
    sweep: Path,
    name: str,
    method: str,
    seed: int,
    value: float,
    identity: dict,
    legacy: bool = False,
    status: str = "done",
) -> Path:
    """A job folder as a job leaves it (result.json, a Hydra record, a short test curve)."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("[]\n")
    full = {"seed": seed, "method.name": method, "dataset.name": "digits", **identity}
    record = {
        "status": status,
        "method": method,
        "dataset": "digits",
        "model": "mlp",
        "seed": seed,
        "metric_name": "error_rate",
        "test_metric": value,
        "wall_time_s": {"train": 1.0},
    }
    if legacy:  # written before identities: the report reads config_resolved.yaml
        nested: dict = {}
        for key, val in full.items():
            node = nested
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = val
        (folder / "config_resolved.yaml").write_text(json.dumps(nested))
    else:
        record["config_identity"] = full
    (folder / "result.json").write_text(json.dumps(record))
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"phase": "train", "step": s, "test/error_rate": value}) + "\n" for s in (10, 20))
    )
    return folder


def test_settings_other_than_the_seed_are_never_pooled(tmp_path: Path) -> None:
    """`optimizer.lr=0.01,0.1` is two rows; a method setting is its own column; CE pairs within a row."""
    sweep = tmp_path / "sweep"
    values = {
        (0.01, "ce", 0): 0.10,
        (0.01, "ce", 1): 0.12,
        (0.1, "ce", 0): 0.50,
        (0.1, "ce", 1): 0.54,
        (0.01, "adalfl", 0): 0.09,
        (0.01, "adalfl", 1): 0.10,
        (0.1, "adalfl", 0): 0.40,
        (0.1, "adalfl", 1): 0.60,
    }
    for (lr, method, seed), value in values.items():
        extra = {"method.meta.online_lr": 1e-5} if method == "adalfl" else {}
        _fake_job(
            sweep,
            f"lr{lr}-{method}-{seed}",
            method,
            seed,
            value,
            {"optimizer.lr": lr, "dataset.steps": 30, **extra},
            legacy=(method == "ce" and seed == 1),
        )  # old and new results group alike
    for seed, value in ((0, 0.07), (1, 0.08)):  # another AdaLFL meta learning rate: its own column
        _fake_job(
            sweep,
            f"lr0.01-adalfl-eta-{seed}",
            "adalfl",
            seed,
            value,
            {"optimizer.lr": 0.01, "dataset.steps": 30, "method.meta.online_lr": 1e-4},
        )
    built = report.write(sweep)
    assert list(built.cells) == [("digits", "mlp", "optimizer.lr=0.01"), ("digits", "mlp", "optimizer.lr=0.1")]
    assert built.methods == ["ce", "adalfl [meta.online_lr=0.0001]", "adalfl [meta.online_lr=1e-05]"]
    low, high = built.cells.values()
    assert low["ce"].values == pytest.approx([10.0, 12.0]) and high["ce"].values == pytest.approx([50.0, 54.0])
    assert "adalfl [meta.online_lr=0.0001]" not in high
    md = (sweep / "results.md").read_text()
    assert "| dataset | model | setting | ce |" in md
    assert "| digits | mlp | optimizer.lr=0.1 | 52.00 ± 2.83 (n=2) |" in md  # never 31.5 pooled over both lrs
    pairs = {(row[2], p.method): p for row, cells in built.cells.items() for p in report.paired_with_baseline(cells)}
    assert pairs[("optimizer.lr=0.1", "adalfl [meta.online_lr=1e-05]")].mean_difference == pytest.approx(-2.0)
    assert pairs[("optimizer.lr=0.01", "adalfl [meta.online_lr=0.0001]")].wins == 2
    with open(sweep / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["setting"], r["method"], r["n_finished"]) for r in rows} >= {("optimizer.lr=0.1", "ce", "2")}
    assert {p.name for p in (sweep / "figures").glob("curves_*.png")} == {
        "curves_digits_mlp_optimizer.lr=0.01.png",
        "curves_digits_mlp_optimizer.lr=0.1.png",
    }


def test_a_key_only_some_jobs_know_is_no_setting_and_stopped_jobs_are_unfinished(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _fake_job(sweep, "a", "ce", 0, 0.1, {"optimizer.lr": 0.01})
    _fake_job(sweep, "b", "ce", 1, 0.2, {"optimizer.lr": 0.01, "method.dead_loss.patience": 10})  # newer code
    _fake_job(sweep, "c", "ce", 2, 0.3, {"optimizer.lr": 0.01}, status="interrupted")
    built = report.build(sweep)
    assert list(built.cells) == [("digits", "mlp", "")] and built.methods == ["ce"]
    assert built.cells[("digits", "mlp", "")]["ce"].values == pytest.approx([10.0, 20.0])
    assert [f.name for f in built.unfinished] == ["c"] and not built.failed
    assert "| dataset | model | ce |" in report.markdown(built)  # no setting column when nothing differs


def test_done_failed_and_interrupted_are_three_states(tmp_path: Path) -> None:
    """An interrupted job (stopped by a signal or a preemption) resumes when rerun: it is counted and
    listed as interrupted, with the command that resumes it, never as failed."""
    sweep = tmp_path / "sweep"
    states = {
        "seed=0": (Status.DONE, None),
        "seed=1": (Status.FAILED, "RuntimeError: the loss became nan at step 20"),
        "seed=2": (Status.INTERRUPTED, "SystemExit: 143"),
    }
    for seed, (name, (status, error)) in enumerate(states.items()):
        folder = sweep / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- method=ce\n- {name}\n")
        (folder / "metrics.jsonl").write_text(
            json.dumps({"phase": "train", "step": 10, "test/error_rate": 0.25}) + "\n"
        )
        Result(
            status=status,
            method="ce",
            dataset="digits",
            model="mlp",
            seed=seed,
            metric_name="error_rate",
            config_identity={"seed": seed, "optimizer.lr": 0.01},
            overrides=["method=ce", name],
            test_metric=0.25 if status == Status.DONE else None,
            error=error,
            wall_time_s=WallTime(train=3.0, total=3.5),
        ).write(folder / "result.json")
    built = report.write(sweep)
    assert [j.folder.name for j in built.failed] == ["seed=1"]
    assert [j.folder.name for j in built.interrupted] == ["seed=2"]
    cell = built.cells[("digits", "mlp", "")]["ce"]
    assert (cell.values, cell.failed, cell.interrupted) == ([25.0], 1, 1)
    md = (sweep / "results.md").read_text()
    assert "| digits | mlp | **25.00 ± 0.00 (n=1, 1 failed, 1 interrupted)** |" in md
    assert "- failed: `seed=1`: RuntimeError: the loss became nan at step 20" in md
    assert (
        f"- interrupted: `seed=2`: SystemExit: 143; resume: `python main.py method=ce seed=2 "
        f"hydra.run.dir={sweep / 'seed=2'}`"
    ) in md
    assert f"hydra.sweep.dir={sweep}" in md and "not finished" not in md  # listed once, as interrupted
    with open(sweep / "results.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert (row["n_finished"], row["n_failed"], row["n_interrupted"]) == ("1", "1", "1")


def test_a_cell_with_only_interrupted_jobs_says_so() -> None:
    cells = {("d", "m"): {"a": report.Cell([], interrupted=2)}}
    built = report.Report(Path("."), "t", set(), {("d", "m"): "mse"}, ["a"], cells, [], [], [])
    assert "| d | m | interrupted (n=0, 2 interrupted) |" in report.markdown(built)


@pytest.mark.parametrize(
    "seconds, unit, cell",
    [
        ((0.0000025, 0.025), "Seconds", "0.03 (0.00 + 0.03)"),  # a smoke job: was 6.98e-06 (6.87e-10 + 6.98e-06) hours
        ((600.0, 1200.0), "Minutes", "30.00 (10.00 + 20.00)"),
        ((3600.0, 36000.0 * 30), "Hours", "301 (1.00 + 300)"),
    ],
)
def test_run_time_table_is_in_one_human_unit(seconds: tuple[float, float], unit: str, cell: str) -> None:
    offline, train = seconds
    slow = report.Cell([1.0], seeds=[0], hours_offline=[offline / 3600], hours_train=[train / 3600])
    fast = report.Cell([1.0], seeds=[0], hours_offline=[0.0], hours_train=[1 / 3600])  # 1 s: same unit as the largest
    built = report.Report(
        Path("."), "t", {"mse"}, {("d", "m"): "mse"}, ["a", "b"], {("d", "m"): {"a": slow, "b": fast}}, [], [], []
    )
    md = report.markdown(built)
    run_time = md.split("## Run time")[1]
    assert f"{unit} per job, mean over finished seeds" in run_time
    ones = {"Seconds": "1.00", "Minutes": "0.02", "Hours": "0.00"}[unit]
    assert f"| d | m | {cell} | {ones} (0.00 + {ones}) |" in run_time
    assert "e-" not in run_time
