"""The sweep's own W&B run: its results tables as ``wandb.Table`` and its figures as images.

Each time the sweep report is rebuilt (after every job and at the end, see adalfl.sweep.callbacks),
``publish`` sends the whole current report to ONE W&B run per sweep: ``job_type`` ``report``,
``group`` the experiment (or the sweep folder's name), its run id kept in the sweep folder
(``.wandb_report_run_id``) so every rebuild, and a rerun of the sweep, continue the same run.

Offline (the default), the run's files land in ``<sweep>/wandb/offline-run-*``. Every rebuild holds
the complete report, so it replaces the previous rebuild's offline folder: the sweep keeps exactly
one, which ``wandb sync <sweep>/wandb/offline-run-*`` uploads. Online, each rebuild resumes the run
and logs a new step. Rebuilds of one sweep never overlap (a lock file in the sweep folder: the jobs
of a parallel launcher each rebuild the report when they end). A W&B failure is a warning: it never
costs the report on disk.
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import math
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

from adalfl.track.wandb_logger import has_credentials, run_id

log = logging.getLogger(__name__)


# What publish reads of adalfl.sweep.report's Report and Table. Described here, not imported: the
# sweep package sits above track (scripts/check_imports.py).
# Read-only members (properties): the report's classes hold narrower types in mutable attributes.
class SweepReport(Protocol):
    @property
    def sweep(self) -> Path: ...
    @property
    def title(self) -> str: ...
    @property
    def methods(self) -> Sequence[str]: ...  # column labels
    @property
    def cells(
        self,
    ) -> Mapping[Any, Mapping[str, Any]]: ...  # row -> column -> cell, whose ``values`` are its finished seeds
    @property
    def failed(self) -> Sequence[Any]: ...
    @property
    def interrupted(self) -> Sequence[Any]: ...
    @property
    def unfinished(self) -> Sequence[Any]: ...
    @property
    def missing(self) -> Sequence[Any]: ...


class ReportTable(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def columns(self) -> Sequence[str]: ...
    @property
    def rows(self) -> Sequence[Sequence[str]]: ...


RUN_ID_FILE = ".wandb_report_run_id"
LOCK_FILE = ".wandb_report.lock"
# results.csv columns that W&B gets as numbers (sortable, plottable); every other column is text.
CSV_NUMBERS = {
    "n_finished": int,
    "n_failed": int,
    "n_interrupted": int,
    "mean": float,
    "std": float,
    "hours_offline": float,
    "hours_train": float,
}


def csv_table(csv_body: str) -> tuple[list[str], list[list[Any]]]:
    """results.csv as W&B table columns and rows: the numeric columns as numbers (an empty or nan
    cell as None, which W&B stores as null), the rest as the CSV's text."""
    reader = csv.reader(io.StringIO(csv_body))
    columns = next(reader)
    rows = []
    for row in reader:
        cells: list[Any] = []
        for column, text in zip(columns, row):
            kind = CSV_NUMBERS.get(column)
            if kind is None:
                cells.append(text)
            else:
                value = float(text) if text else math.nan
                cells.append(None if math.isnan(value) else kind(value))
        rows.append(cells)
    return columns, rows


def enabled(logger: Mapping[str, Any]) -> bool:
    """Whether a ``logger`` config node asks for W&B (``logger=none`` or ``mode=disabled``: no W&B at all)."""
    return logger.get("name") == "wandb" and logger.get("mode", "disabled") != "disabled"


def publish(
    report: SweepReport, tables: Sequence[ReportTable], csv_body: str, figures: list[Path], logger: Mapping[str, Any]
) -> None:
    """Send the report's tables, results.csv and the figures written by this rebuild to the sweep's
    W&B run. Never raises: the report on disk is what matters."""
    if not enabled(logger):
        return
    mode = str(logger["mode"])
    if mode == "online" and not has_credentials():
        log.warning(
            "W&B online mode needs credentials (`wandb login` or WANDB_API_KEY); the sweep report "
            "is not sent to W&B, results.md/.csv/.tex are unaffected"
        )
        return
    try:
        with _locked(report.sweep / LOCK_FILE):
            _log_run(report, tables, csv_body, figures, logger, mode)
    except Exception as err:  # noqa: BLE001 - W&B must never cost the report
        log.warning(
            "could not send the sweep report to W&B (%s: %s); results.md/.csv/.tex are unaffected",
            type(err).__name__,
            err,
        )


def _log_run(
    report: SweepReport,
    tables: Sequence[ReportTable],
    csv_body: str,
    figures: list[Path],
    logger: Mapping[str, Any],
    mode: str,
) -> None:
    import wandb

    sweep = report.sweep
    identifier = run_id(sweep, RUN_ID_FILE)
    tags = [str(tag) for tag in logger.get("tags") or []] + [report.title]
    run = wandb.init(
        project=logger.get("project"),
        entity=logger.get("entity"),
        group=report.title,
        job_type="report",
        name=f"report-{report.title}",
        tags=sorted(set(tags)),
        config={
            "experiment": report.title,
            "sweep_dir": str(sweep.resolve()),
            "methods": report.methods,
            "rows": ["/".join(part for part in row if part) for row in report.cells],
        },
        dir=str(sweep),
        mode=mode,
        id=identifier,
        resume="allow",
        reinit="create_new",  # leaves any job run of this process alone
        settings=wandb.Settings(init_timeout=60, console="off", silent=True),
    )
    failed = True
    try:
        values: dict[str, Any] = {f"results/{t.key}": wandb.Table(columns=t.columns, data=t.rows) for t in tables}
        columns, rows = csv_table(csv_body)
        values["results/csv"] = wandb.Table(columns=columns, data=rows)
        values.update({f"figures/{path.stem}": wandb.Image(str(path)) for path in figures})
        run.log(values)
        run.summary.update(
            {
                "jobs/finished": sum(len(c.values) for by_method in report.cells.values() for c in by_method.values()),
                "jobs/failed": len(report.failed),
                "jobs/interrupted": len(report.interrupted),  # also counted in jobs/unfinished
                "jobs/unfinished": len(report.unfinished),
                "jobs/not_started": len(report.missing),
            }
        )
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)
    if mode == "offline":
        _drop_older_offline_runs(Path(run.settings.sync_dir), identifier)


def _drop_older_offline_runs(current: Path, identifier: str) -> None:
    """Remove this report run's offline folders from earlier rebuilds: the current one holds the
    whole report, and two offline folders of one run id would sync as one run twice."""
    for folder in current.parent.glob(f"offline-run-*-{identifier}*"):
        # offline-run-<time>-<id>, or ...-<id>-<n> when two starts fell in the same second
        if folder != current and folder.is_dir() and folder.name.split("-")[3] == identifier:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the duration (released when the process dies, too)."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
