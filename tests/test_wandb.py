"""W&B: offline runs land in the job folder (and a sweep's report run in the sweep folder), hold what
the tests read back with W&B's own reader; disabled writes nothing; failures never cost a run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from adalfl.app import run
from adalfl.sweep import report
from adalfl.track.wandb_report import CSV_NUMBERS, csv_table, publish

from helpers import REPO, tiny
from mainproc import run_main
from wandb_files import OfflineRun, offline_runs


class FakeRun:
    """Stands in for a wandb Run: records what it is asked to log, and how it finished."""

    def __init__(self, log: list | None = None, finished: list | None = None) -> None:
        self.summary: dict = {}
        self.logged = log if log is not None else []
        self.finished = finished if finished is not None else []

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, values: dict) -> None:
        self.logged.append(values)

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


def _wandb_cfg(mode: str):
    return tiny("logger=wandb", f"logger.mode={mode}", "logger.tags=[unit]")


def test_offline_run_files_hold_config_summary_history_and_images(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `wandb sync` would upload, read back with W&B's own reader of the `.wandb` log."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _wandb_cfg("offline")
    run(cfg, out_dir=job_dir)
    runs = offline_runs(job_dir / "wandb")
    assert len(runs) == 1 and runs[0].name.split("-")[3] == (job_dir / ".wandb_run_id").read_text()  # one run per job
    stored = OfflineRun.read(runs[0])
    result = json.loads((job_dir / "result.json").read_text())
    assert stored.state["state"] == "finished" and stored.state["exit_code"] == 0
    assert stored.run["job_type"] == "ce" and stored.run["run_group"] == f"digits-{result['model']}-ce"
    assert "unit" in stored.state["tags"]
    # config: the resolved job config
    assert stored.config["dataset"]["name"] == "digits" and stored.config["method"]["name"] == "ce"
    assert stored.config["optimizer"]["lr"] == cfg.optimizer.lr and stored.config["seed"] == 0
    # summary: every key a runs table needs, equal to result.json
    for key in (
        "status",
        "dataset",
        "model",
        "method",
        "seed",
        "metric_name",
        "test_metric",
        "best_val_metric",
        "test_metric_at_best_val",
        "steps",
    ):
        assert stored.summary[key] == result[key], key
    for phase in ("offline", "train", "eval", "total"):
        assert stored.summary[f"wall_time_s/{phase}"] == pytest.approx(result["wall_time_s"][phase])
    # history: one row per metrics.jsonl record, same step and values
    records = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    history = stored.history()
    rows = [row for row in history if "train/step" in row and not any(key.startswith("plots/") for key in row)]
    assert [row["train/step"] for row in rows] == [record["step"] for record in records]
    for record, row in zip(records, rows):
        for key, value in record.items():
            if key not in ("phase", "step"):
                assert row[key] == pytest.approx(value), key
    assert {"train/base_loss", "train/lr", "val/error_rate", "test/error_rate"} <= set(rows[-1])
    # images: the learning curves, as the PNG the job wrote
    assert [row["train/step"] for row in history if "plots/learning_curves.path" in row] == [records[-1]["step"]]
    image = stored.media("plots/learning_curves")
    assert stored.summary["plots/learning_curves"]["_type"] == "image-file"
    assert image.read_bytes() == (job_dir / "learning_curves.png").read_bytes()


def test_offline_logger_sends_the_same_scalars(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record what the W&B client is asked to log, without starting W&B's service."""
    import wandb

    logged: list[dict] = []
    inits: list[dict] = []
    finished: list[int] = []

    def fake_init(**kwargs):
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


def test_online_without_credentials_warns_and_finishes(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(job_dir / "no-netrc"))
    run(_wandb_cfg("online"), out_dir=job_dir)
    assert "W&B online mode needs credentials" in caplog.text
    assert json.loads((job_dir / "result.json").read_text())["status"] == "done"


def test_wandb_crash_does_not_cost_the_run(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    def broken_init(**kwargs):
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


# A sweep with W&B offline: 2 methods x 2 seeds on Digits, AdaLFL for the learned-loss figure.
SWEEP_ARGS = [
    "-m",
    "dataset=digits",
    "method=ce,adalfl",
    "seed=0,1",
    "dataset.steps=20",
    "dataset.eval_interval=10",
    "offline.steps=5",
    "logger=wandb",
    "logger.mode=offline",
    "logger.tags=[unit]",
    "checkpoint.every=0",
    "runtime.threads=1",
]


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wandb_sweep")
    proc = run_main([*SWEEP_ARGS, f"hydra.sweep.dir={root / 'sweep'}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "sweep"


def _csv_cell(column: str, text: str):
    if column not in CSV_NUMBERS:
        return text
    return None if text in ("", "nan") else CSV_NUMBERS[column](float(text))


def test_sweep_report_run_holds_the_tables_and_figures(wandb_sweep: Path) -> None:
    """One report run per sweep, rebuilt after each job and at the end, read back from its offline
    files: results.csv cell for cell, the Markdown tables, and every figure."""
    runs = offline_runs(wandb_sweep / "wandb")
    # offline-run-<time>-<id>[-<n>]: W&B adds -<n> when two rebuilds start within the same second
    assert len(runs) == 1 and runs[0].name.split("-")[3] == (wandb_sweep / ".wandb_report_run_id").read_text()
    stored = OfflineRun.read(runs[0])
    assert stored.state["state"] == "finished" and stored.state["exit_code"] == 0
    assert stored.run["job_type"] == "report" and stored.run["run_group"] == "sweep"  # no experiment: the folder
    assert {"unit", "sweep"} <= set(stored.state["tags"])
    assert stored.config["methods"] == ["ce", "adalfl"]

    with open(wandb_sweep / "results.csv", newline="") as handle:
        csv_rows = list(csv.reader(handle))
    columns, rows = stored.table("results/csv")
    assert columns == csv_rows[0] and len(rows) == len(csv_rows) - 1 == 2
    for row, expected in zip(rows, csv_rows[1:]):
        assert row == [_csv_cell(column, text) for column, text in zip(columns, expected)]

    built = report.build(wandb_sweep)
    md = (wandb_sweep / "results.md").read_text()
    for table in report.tables(built):
        assert stored.table(f"results/{table.key}") == (table.columns, table.rows)
        assert table.caption in md
    assert stored.summary["jobs/finished"] == 4 and stored.summary["jobs/failed"] == 0

    figures = sorted((wandb_sweep / "figures").glob("*.png"))
    assert {p.stem for p in figures} == {"curves_digits_mlp", "learned_loss_digits_mlp"}
    for figure in figures:
        assert stored.media(f"figures/{figure.stem}").read_bytes() == figure.read_bytes()


def test_job_runs_of_a_sweep_carry_what_a_runs_table_needs(wandb_sweep: Path) -> None:
    """W&B's own grouping (dataset-model-method) rebuilds the paper's cell from the job summaries."""
    by_group: dict[str, list[float]] = {}
    for job in sorted(wandb_sweep.glob("*/result.json")):
        (folder,) = offline_runs(job.parent / "wandb")
        stored = OfflineRun.read(folder)
        by_group.setdefault(stored.run["run_group"], []).append(100 * stored.summary["test_metric"])
        assert stored.summary["status"] == "done" and stored.summary["wall_time_s/total"] > 0
    with open(wandb_sweep / "results.csv", newline="") as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(by_group) == {"digits-mlp-ce", "digits-mlp-adalfl"}
    for group, values in by_group.items():
        assert statistics.fmean(values) == pytest.approx(float(table[group.rsplit("-", 1)[1]]["mean"]), rel=1e-5)


def test_rebuilt_report_replaces_its_offline_run(wandb_sweep: Path, tmp_path: Path) -> None:
    """`python -m adalfl.report` on a W&B sweep sends it again to the same run, still one folder."""
    sweep = tmp_path / "sweep"
    shutil.copytree(wandb_sweep, sweep)
    (before,) = offline_runs(sweep / "wandb")
    table_before = OfflineRun.read(before).table("results/csv")
    proc = subprocess.run(
        [sys.executable, "-m", "adalfl.report", str(sweep)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_SILENT": "true"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (after,) = offline_runs(sweep / "wandb")
    assert after != before and after.name.split("-")[3] == before.name.split("-")[3]
    assert OfflineRun.read(after).table("results/csv") == table_before


def test_csv_table_types_numbers_and_keeps_missing_values_null() -> None:
    body = "dataset,n_finished,mean,values,hours_train\ndigits,0,nan,,\nx,2,1.5,1 2,0.25\n"
    assert csv_table(body) == (
        ["dataset", "n_finished", "mean", "values", "hours_train"],
        [["digits", 0, None, "", None], ["x", 2, 1.5, "1 2", 0.25]],
    )


def test_sweep_report_with_wandb_off_starts_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kwargs: pytest.fail("W&B started"))
    for logger in ({"name": "none", "mode": "disabled"}, {"name": "wandb", "mode": "disabled"}):
        built = report.Report(tmp_path, "t", set(), {}, [], {}, [], [], [])
        publish(built, report.tables(built), "dataset\n", [], logger)
    assert not (tmp_path / "wandb").exists()


def test_workspace_opens_on_the_sweep_results_grouped_by_cell(wandb_sweep: Path) -> None:
    """The wandb-workspaces definition is built offline, and every key it shows is one the sweep's
    runs hold: the report run's tables and figures, the job runs' config keys and curves."""
    pytest.importorskip("wandb_workspaces", reason="in the dev extra: pip install -e '.[dev]'")
    from wandb_workspaces.reports.v2 import LinePlot, MediaBrowser, WeavePanelSummaryTable

    from adalfl.track import wandb_workspace

    settings = wandb_workspace.sweep_settings(wandb_sweep)
    assert (settings["project"], settings["title"], settings["metrics"]) == ("adalfl", "sweep", ["error_rate"])
    workspace = wandb_workspace.build(
        **{k: settings[k] for k in ("project", "entity", "title", "experiment", "metrics", "figures")}
    )
    panels = [panel for section in workspace.sections for panel in section.panels]

    (report_run,) = offline_runs(wandb_sweep / "wandb")
    summary = OfflineRun.read(report_run).summary
    tables = [p.table_name for p in panels if isinstance(p, WeavePanelSummaryTable)]
    assert {"results/table", "results/run_time"} <= set(tables) and set(tables) <= set(summary) | {"results/paired"}
    (media,) = [p for p in panels if isinstance(p, MediaBrowser)]
    assert media.media_keys and set(media.media_keys) <= set(summary)

    job = OfflineRun.read(offline_runs(next(wandb_sweep.glob("*/wandb")))[0])
    for key in (g.name for g in workspace.runset_settings.groupby):  # grouped by dataset, model and method
        section, name = key.split(".")
        assert name in job.config[section], key
    assert [g.name for g in workspace.runset_settings.groupby] == ["dataset.name", "model._target_", "method.name"]
    history_keys = set().union(*job.history())
    curves = [p for p in panels if isinstance(p, LinePlot) and p.x == "train/step"]
    assert {"test/error_rate", "val/error_rate"} == {y for p in curves for y in p.y} and set(
        curves[0].y
    ) <= history_keys
    assert all(
        (p.groupby_aggfunc, p.groupby_rangefunc) == ("mean", "stddev") for p in panels if isinstance(p, LinePlot)
    )
    assert {c.split(":")[1] for c in workspace.runset_settings.pinned_columns if c.startswith("summary:")} <= set(
        job.summary
    )
    workspace._to_model()  # the form `Workspace.save` sends to W&B's API: it too builds without network
    assert wandb_workspace.main([str(wandb_sweep), "--check"]) == 0  # the command's offline mode
