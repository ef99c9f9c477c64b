"""result.json through adalfl.result.Result: a round trip loses nothing, the files older versions
wrote still read (and write back key for key), and a file that is no result is refused by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from adalfl.losses import Task
from adalfl.losses.learned import OutputWiseLoss
from adalfl.methods.learned_loss import DeadLossConfig, DeadLossMonitor, loss_health
from adalfl.result import DeadLoss, LossHealth, Result, ResultError, Status, WallTime

# Written by the job at commit 42784c1, before the Result type, by:
#   python main.py logger=none threads=1 dataset.steps=50 offline.steps=20 hydra.run.dir=...   (done)
#   python main.py logger=none threads=1 dataset=diabetes dataset.batch_size=100000 ...         (failed)
#   python main.py logger=none threads=1 method=ce dataset.steps=1000000 ...  then SIGTERM      (interrupted)
OLD = Path(__file__).parent / "data" / "result_42784c1"


def full_result() -> Result:
    return Result(
        status=Status.DONE,
        method="adalfl",
        dataset="digits",
        model="mlp",
        seed=3,
        metric_name="error_rate",
        experiment="table_mnist",
        config_identity={"seed": 3, "optimizer.lr": 0.01, "model.widths": [100, 100]},
        config_fingerprint="0123456789abcdef",
        overrides=["method=adalfl", "seed=3"],
        versions={"python": "3.11.7", "torch": "2.14.1"},
        git_commit="abc123",
        device="cpu",
        threads=2,
        cpu_memory_reuse=True,
        test_metric=0.125,
        final_val_metric=0.1,
        best_val_metric=0.09,
        best_val_step=40,
        test_metric_at_best_val=0.13,
        steps=50,
        loss_health=LossHealth(scale=1.5, free_wrong=0.0, flat_t0=0.01, flat_t1=0.02, free_miss=0.0),
        dead_loss=DeadLoss(dead_logged_steps=1, longest_run=1),
        wall_time_s=WallTime(offline=1.0, train=2.0, eval=0.5, total=4.0),
    )


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    result = full_result()
    path = tmp_path / "job" / "result.json"
    result.write(path)
    assert Result.read(path) == result
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # the temporary file was renamed
    stored = json.loads(path.read_text())
    assert stored["status"] == "done" and stored["loss_health"]["free_wrong"] == 0.0
    assert list(stored) == sorted(stored)  # the layout the job has always written: sorted keys, indented
    assert "error" not in stored and "traceback" not in stored  # unset fields are left out, as before


def test_failed_and_interrupted_round_trip(tmp_path: Path) -> None:
    for status in (Status.FAILED, Status.INTERRUPTED):
        result = Result(
            status=status,
            method="ce",
            dataset="diabetes",
            model="mlp",
            seed=0,
            metric_name="mse",
            error="SystemExit: 143",
            traceback="Traceback ...",
            wall_time_s=WallTime(total=2.5),
        )
        result.write(tmp_path / "result.json")
        back = Result.read(tmp_path / "result.json")
        assert back == result and back.status is status and not back.finished
        stored = json.loads((tmp_path / "result.json").read_text())
        assert stored["wall_time_s"] == {"total": 2.5} and "test_metric" not in stored
        assert stored["experiment"] is None and stored["overrides"] is None  # always written, as before


@pytest.mark.parametrize("name", ["done_adalfl_digits", "failed_batch_size", "interrupted_sigterm"])
def test_results_written_before_the_type_read_and_write_back_unchanged(name: str, tmp_path: Path) -> None:
    path = OLD / f"{name}.json"
    result = Result.read(path)
    assert result.status == name.split("_")[0]
    assert result.to_dict() == json.loads(path.read_text())  # same keys, same values
    result.write(tmp_path / "result.json")
    assert (tmp_path / "result.json").read_text() == path.read_text()  # byte for byte


def test_the_old_done_result_in_fields() -> None:
    result = Result.read(OLD / "done_adalfl_digits.json")
    assert (result.method, result.dataset, result.model, result.seed, result.metric_name) == (
        "adalfl",
        "digits",
        "mlp",
        0,
        "error_rate",
    )
    assert result.finished and result.test_metric == pytest.approx(0.8805555555555555) and result.steps == 50
    assert result.loss_health is not None and result.loss_health.free_wrong == 1.0
    assert result.dead_loss == DeadLoss(dead_logged_steps=0, longest_run=0)
    assert result.overrides == ["logger=none", "threads=1", "dataset.steps=50", "offline.steps=20"]
    assert result.config_identity is not None and result.config_identity["offline.steps"] == 20
    assert result.wall_time_s.total == pytest.approx(4.9590417939999725)
    interrupted = Result.read(OLD / "interrupted_sigterm.json")
    assert interrupted.status is Status.INTERRUPTED and interrupted.error == "SystemExit: 143"


def test_older_results_without_optional_keys_read() -> None:
    """The first versions wrote no identity, overrides, threads, method facts or phase times."""
    minimal = {
        "status": "done",
        "method": "ce",
        "dataset": "digits",
        "model": "mlp",
        "seed": 1,
        "metric_name": "error_rate",
        "test_metric": 0.5,
        "wall_time_s": {"train": 1.0},
    }
    result = Result.from_dict(minimal)
    assert result.finished and result.config_identity is None and result.overrides is None
    assert result.threads is None and result.loss_health is None and result.wall_time_s == WallTime(train=1.0)
    assert Result.from_dict({**minimal, "test_metric": math.nan}).finished is False  # NaN: done, but no value


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"step": 10, "phase": "train"}', "status is None"),
        (
            '{"status": "finished", "method": "ce"}',
            "status is 'finished', not one of running, done, failed, interrupted",
        ),
        ('{"status": "done", "method": "ce", "dataset": "digits", "model": "mlp", "seed": 0}', "it has no metric_name"),
        (
            '{"status": "done", "method": "ce", "dataset": "digits", "model": "mlp", "seed": "0", "metric_name": "mse"}',
            "seed is '0', expected int",
        ),
        (
            '{"status": "done", "method": "ce", "dataset": "d", "model": "m", "seed": 0, "metric_name": "mse", "colour": 1}',
            "keys this version does not know: colour",
        ),
        (
            '{"status": "done", "method": "ce", "dataset": "d", "model": "m", "seed": 0, "metric_name": "mse", '
            '"loss_health": {"scale": 1.0}}',
            "loss_health lacks",
        ),
    ],
)
def test_a_file_that_is_no_result_is_refused_by_name(text: str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(text)
    with pytest.raises(ResultError, match="is not a job result") as refused:
        Result.read(path)
    assert str(path) in str(refused.value) and reason in str(refused.value)


class _Pointwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return (pairs[..., 0] - pairs[..., 1]) ** 2


@pytest.mark.parametrize("task", [Task("classification", 10), Task("regression", 1)], ids=lambda t: t.kind)
def test_the_methods_summaries_fit_the_type(task: Task) -> None:
    """What the learned-loss methods report (loss_health, dead_loss) has a field for every key."""
    health = loss_health(
        OutputWiseLoss(task, _Pointwise(), reduction="mean", task_loss_term=False, residual=False), task
    )
    monitor = DeadLossMonitor(DeadLossConfig(), hint="")
    monitor.note_gradient(10, 0.0)
    result = Result(status=Status.DONE, method="adalfl", dataset="d", model="m", seed=0, metric_name="mse")
    result.add_summary({"loss_health": health, **monitor.summary()})
    assert result.loss_health is not None and result.loss_health.to_dict() == health
    assert result.dead_loss == DeadLoss(dead_logged_steps=1, longest_run=1)
    # A fact the type has no field for (a new method's) is kept and survives the file, not refused.
    result.add_summary({"final_lr": 0.1})
    assert result.method_facts == {"final_lr": 0.1}
    again = Result.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.method_facts == {"final_lr": 0.1} and again.loss_health == result.loss_health
