"""A learned loss that stops giving the model any gradient fails the job with a clear reason,
instead of ending 'done' at chance; fewer dead steps than the patience are counted in result.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adalfl.app import run
from adalfl.methods.learned_loss import DeadLossConfig, DeadLossError, DeadLossMonitor

from helpers import tiny

FAST = ("model.widths=[32,32]", "runtime.threads=1", "offline.steps=20", "dataset.eval_interval=50")


def test_monitor_fails_after_patience_consecutive_dead_steps_only() -> None:
    monitor = DeadLossMonitor(DeadLossConfig(grad_norm=1e-8, patience=3), "Lower something")
    monitor.note_gradient(10, 0.0)
    monitor.note_gradient(20, 1e-9)
    monitor.note_gradient(30, 0.5)  # a healthy step ends the run
    monitor.note_gradient(40, 0.0)
    monitor.note_gradient(50, 0.0)
    monitor.note_health(50, {"scale": 3.0}, frozen=False)  # a loss with a shape: not an observation
    with pytest.raises(
        DeadLossError, match=r"no gradient for 3 logged steps in a row \(steps 40-60\).*Lower something"
    ):
        monitor.note_gradient(60, 1e-12)
    assert monitor.summary() == {"dead_loss": {"dead_logged_steps": 5, "longest_run": 3}}


def test_patience_zero_only_counts_and_a_frozen_constant_loss_fails_at_once() -> None:
    counting = DeadLossMonitor(DeadLossConfig(patience=0), "")
    for step in range(10, 200, 10):
        counting.note_gradient(step, 0.0)
    counting.note_health(200, {"scale": 0.0}, frozen=True)
    assert counting.summary()["dead_loss"] == {"dead_logged_steps": 19, "longest_run": 20}
    frozen = DeadLossMonitor(DeadLossConfig(), "Try another search")
    with pytest.raises(DeadLossError, match=r"dead at step 0: the loss is constant .*scale 0\)\. Try another search"):
        frozen.note_health(0, {"scale": 0.0}, frozen=True)


def test_adalfl_whose_loss_dies_fails_with_the_reason(job_dir: Path) -> None:
    """online_lr=10: from step 10 on the base gradient norm is at most 3.9e-12 (measured), the model stops."""
    with pytest.raises(DeadLossError, match=r"learned loss is dead.*method.meta.online_lr \(10\)"):
        run(
            tiny("method=adalfl", "method.meta.online_lr=10", "dataset.steps=300", "dataset.log_interval=10", *FAST),
            out_dir=job_dir,
        )
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "failed" and result["error"].startswith("DeadLossError: the learned loss is dead")
    assert result["dead_loss"]["longest_run"] == 10 and "loss_health" in result
    assert max(r["step"] for r in map(json.loads, (job_dir / "metrics.jsonl").read_text().splitlines())) < 300


def test_healthy_adalfl_counts_no_dead_steps(job_dir: Path) -> None:
    run(tiny("method=adalfl", "dataset.steps=100", "dataset.log_interval=10", *FAST), out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "done" and result["dead_loss"] == {"dead_logged_steps": 0, "longest_run": 0}


def test_a_frozen_loss_with_no_shape_fails_before_training(job_dir: Path) -> None:
    """TaylorGLO from the all-zero polynomial with no search: a constant loss trains nothing."""
    with pytest.raises(DeadLossError, match="constant over every prediction"):
        run(tiny("method=taylorglo", "method.init=zeros", "offline.generations=0", *FAST), out_dir=job_dir)
    records = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["phase"] == "train"]  # no base step was spent on it
