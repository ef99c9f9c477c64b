"""One job end to end: what it leaves behind, failure handling, determinism, skipping."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
from omegaconf import open_dict

from adalfl.app import run
from adalfl.train.loop import NonFiniteLossError

from helpers import tiny
from mainproc import run_main

REQUIRED_KEYS = {
    "status",
    "method",
    "dataset",
    "model",
    "seed",
    "metric_name",
    "test_metric",
    "best_val_metric",
    "wall_time_s",
    "versions",
    "git_commit",
    "threads",
    "cpu_memory_reuse",
}


def _metrics(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("dataset", "metric"), [("digits", "error_rate"), ("diabetes", "mse")])
def test_job_leaves_results_metrics_and_curves(dataset: str, metric: str, job_dir: Path) -> None:
    test_metric = run(tiny(f"dataset={dataset}"), out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert REQUIRED_KEYS <= result.keys()
    assert result["status"] == "done" and result["metric_name"] == metric
    assert result["test_metric"] == test_metric
    assert result["dataset"] == dataset and result["method"] == "ce" and result["model"] == "mlp"
    assert {"train", "eval", "offline", "total"} <= result["wall_time_s"].keys()
    assert result["cpu_memory_reuse"] is sys.platform.startswith("linux")  # glibc took runtime.cpu_memory=reuse
    records = _metrics(job_dir)
    assert [r["step"] for r in records] == list(range(5, 45, 5))  # one record per logged step
    assert records[-1][f"test/{metric}"] == pytest.approx(test_metric)
    assert min(r[f"val/{metric}"] for r in records if f"val/{metric}" in r) == pytest.approx(result["best_val_metric"])
    assert (job_dir / "learning_curves.png").stat().st_size > 1000
    assert (job_dir / "checkpoint.pt").exists()


def test_training_learns_digits(job_dir: Path) -> None:
    run(tiny("dataset.steps=300", "dataset.eval_interval=100", "optimizer.lr=0.1"), out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["test_metric"] < 0.2  # chance is 0.9


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b", "c"):
        seed = 1 if name == "c" else 0
        run(tiny("dataset=diabetes", f"seed={seed}"), out_dir=tmp_path / name)
        runs.append([{k: v for k, v in r.items()} for r in _metrics(tmp_path / name)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_failing_job_records_the_error(job_dir: Path) -> None:
    cfg = tiny("optimizer.lr=1e6", "dataset=diabetes")
    with pytest.raises(NonFiniteLossError, match="base loss became"):
        run(cfg, out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "failed"
    assert "NonFiniteLossError" in result["error"]


def test_finished_job_is_skipped(job_dir: Path) -> None:
    first = run(tiny(), out_dir=job_dir)
    (job_dir / "metrics.jsonl").write_text("")  # would be rewritten if the job ran again
    assert run(tiny(), out_dir=job_dir) == first
    assert (job_dir / "metrics.jsonl").read_text() == ""


def test_device_is_recorded(job_dir: Path) -> None:
    cfg = tiny()
    with open_dict(cfg):
        cfg.runtime.device = "cpu"
    run(cfg, out_dir=job_dir)
    assert json.loads((job_dir / "result.json").read_text())["device"] == "cpu"


def test_adalfl_job_prints_no_future_warning(tmp_path: Path) -> None:
    """PyTorch's `torch.jit.script is deprecated` FutureWarning (raised when the first jvp scripts its
    decompositions) is filtered by main.py; nothing else is, so any other warning still shows."""
    proc = run_main(
        [
            "+experiment=smoke",
            "dataset=digits",
            "method=adalfl",
            "dataset.steps=10",
            "offline.steps=2",
            "logger=none",
            "runtime.progress=false",
            f"hydra.run.dir={tmp_path}/job",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "job" / "result.json").read_text())["status"] == "done"
    assert "FutureWarning" not in proc.stderr, proc.stderr
    assert "lr_scheduler.step()" not in proc.stderr, proc.stderr  # the loop silences it for its own call


@pytest.mark.parametrize("method", ["adalfl", "metalr"])
def test_a_job_leaves_the_process_warning_filters_as_it_found_them(method: str, tmp_path: Path) -> None:
    """The scheduler warning that meta-learning methods cause is silenced around the loop's
    scheduler step only: a job run in a larger program (a notebook, a test session) must not change
    which warnings that program sees."""
    before = list(warnings.filters)
    cfg = tiny(f"method={method}", "dataset.steps=20", "offline.steps=2")
    run(cfg, out_dir=tmp_path / "job")
    assert warnings.filters == before
