"""W&B: offline runs land in the job folder; disabled writes nothing; failures never cost a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adalfl.app import run

from conftest import tiny


class FakeRun:
    """Stands in for a wandb Run: records what it is asked to log, and how it finished."""

    def __init__(self, log: list | None = None, finished: list | None = None) -> None:
        self.summary: dict = {}
        self.logged = log if log is not None else []
        self.finished = finished if finished is not None else []

    def define_metric(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        pass

    def log(self, values: dict) -> None:
        self.logged.append(values)

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


def _wandb_cfg(mode: str):
    return tiny("logger=wandb", f"logger.mode={mode}", "logger.tags=[unit]")


def test_offline_run_is_written_inside_the_job_folder(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(_wandb_cfg("offline"), out_dir=job_dir)
    runs = list((job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # exactly one run per job
    assert list(runs[0].glob("*.wandb"))  # the run's data file, for `wandb sync`
    assert json.loads((job_dir / "result.json").read_text())["status"] == "done"


def test_offline_logger_sends_the_same_scalars(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record what the W&B client is asked to log, without starting W&B's service."""
    import wandb

    logged: list[dict] = []
    inits: list[dict] = []
    finished: list[int] = []

    def fake_init(**kwargs):  # noqa: ANN003, ANN202
        inits.append(kwargs)
        return FakeRun(logged, finished)

    monkeypatch.setattr(wandb, "init", fake_init)
    run(_wandb_cfg("offline"), out_dir=job_dir)
    init = inits[0]
    assert init["mode"] == "offline" and init["dir"] == str(job_dir)
    assert init["group"] == "digits-mlp-ce" and init["job_type"] == "ce" and "unit" in init["tags"]
    assert isinstance(init["config"], dict) and init["config"]["dataset"]["name"] == "digits"
    assert finished == [0]
    records = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = [v for v in logged if "train/step" in v and "plots/learning_curves" not in v]
    assert len(scalars) == len(records)
    for record, sent in zip(records, scalars):
        assert sent["train/step"] == record["step"]
        for key, value in record.items():
            if key not in ("phase", "step"):
                assert sent[key] == pytest.approx(value)
    assert any("plots/learning_curves" in v for v in logged)


def test_disabled_mode_writes_nothing(job_dir: Path) -> None:
    run(_wandb_cfg("disabled"), out_dir=job_dir)
    assert not (job_dir / "wandb").exists()


def test_online_without_credentials_warns_and_finishes(job_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(job_dir / "no-netrc"))
    run(_wandb_cfg("online"), out_dir=job_dir)
    assert "W&B online mode needs credentials" in caplog.text
    assert json.loads((job_dir / "result.json").read_text())["status"] == "done"


def test_wandb_crash_does_not_cost_the_run(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    def broken_init(**kwargs):  # noqa: ANN003, ANN202
        raise RuntimeError("service unavailable")

    monkeypatch.setattr(wandb, "init", broken_init)
    run(_wandb_cfg("offline"), out_dir=job_dir)
    assert json.loads((job_dir / "result.json").read_text())["status"] == "done"


def test_run_is_finished_when_the_job_raises(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    finished: list[int] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeRun(finished=finished))
    with pytest.raises(Exception, match="base loss"):
        run(tiny("logger=wandb", "dataset=diabetes", "optimizer.lr=1e6"), out_dir=job_dir)
    assert finished == [1]
