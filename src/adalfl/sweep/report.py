"""Turn a sweep folder into the paper's tables and figures.

Reads every job's ``result.json`` (and ``metrics.jsonl`` for curves) under a sweep folder and
writes, into that folder:

* ``results.md`` / ``results.csv`` / ``results.tex``: rows dataset x model (x setting), columns
  methods, the final test metric as mean ± standard deviation over finished seeds, the best per
  row in bold, the number of finished seeds and of failed and interrupted jobs; failed,
  interrupted (with the command that resumes each), unfinished and never-started jobs listed; and
  the run-time table (time per job and method, mean over seeds, split into the offline phase and
  training, in seconds, minutes or hours as fits the table).
* ``figures/curves_<dataset>_<model>[_<setting>].png``: test metric against training step per
  method, mean with a ± std band over seeds.
* ``figures/learned_loss_<dataset>_<model>[_<setting>].png``: AdaLFL's learned loss through training.

Only seeds are pooled. Each job's config identity (result.json's ``config_identity``, else its
``config_resolved.yaml``; run-time switches such as device and threads are not part of it) is
compared with the other jobs of its dataset x model: a setting that differs, e.g.
``optimizer.lr=0.01,0.1``, makes separate rows named by the ``setting`` column, and a differing
method setting (``method.*``) separate columns, e.g. ``adalfl [meta.online_lr=0.0001]``. A key only
some jobs have (a version of the code that lacked it) is not a difference.

With W&B on (``logger`` given to ``write``), the same tables and figures also go to the sweep's one
W&B run (``adalfl.track.wandb_report``).

Works on partial sweeps, so it can be run at any time: ``python -m adalfl.report <sweep folder>``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from adalfl.result import RESULT_FILE, Result, ResultError, Status
from adalfl.utils import atomic_write_bytes

METHOD_ORDER = ["ce", "ml3", "taylorglo", "metalr", "adalfl"]
METRIC_LABEL = {"error_rate": "test error rate (%)", "mse": "test MSE"}


Row = tuple[str, str, str]  # dataset, model, setting ("" when the sweep varies nothing else)


@dataclass
class Job:
    folder: Path
    result: Result
    setting: str = ""  # what sets this job's row apart from the others of its dataset x model
    column: str = ""  # its method, with the method settings that set it apart

    @property
    def key(self) -> Row:
        return self.result.dataset, self.result.model, self.setting

    @property
    def identity(self) -> dict:
        """The job's config identity without its seed (see adalfl.train.folder)."""
        from adalfl.train.folder import recorded_identity

        found = self.result.config_identity
        if found is None:
            found = recorded_identity(self.folder) or {}
        return {k: v for k, v in found.items() if k != "seed"}

    @property
    def done(self) -> bool:
        return self.result.finished


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # finished seeds, in display units
    seeds: list[int] = field(default_factory=list)  # the seed of each value, for paired comparisons
    failed: int = 0
    interrupted: int = 0  # stopped from outside; resumes when rerun
    hours_offline: list[float] = field(default_factory=list)
    hours_train: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class Report:
    sweep: Path
    title: str
    metric_names: set[str]
    row_metric: dict[Row, str]
    methods: list[str]  # column labels: a method, or a method with its distinguishing settings
    cells: dict[Row, dict[str, Cell]]
    failed: list[Job]
    unfinished: list[Path]  # folders of jobs not done: no result yet, running, or interrupted
    missing: list[str]
    jobs: list[Job] = field(default_factory=list)
    interrupted: list[Job] = field(default_factory=list)  # also in unfinished, listed with how to resume

    @property
    def has_settings(self) -> bool:
        return any(len(row) > 2 and row[2] for row in self.cells)

    def best(self, row: Row) -> str | None:
        finished = {m: c.mean for m, c in self.cells[row].items() if c.values}
        return min(finished, key=finished.__getitem__) if finished else None  # every metric: lower is better


def _display(value: float, metric: str) -> float:
    return 100.0 * value if metric == "error_rate" else value


def find_jobs(sweep: Path) -> tuple[list[Job], list[Path]]:
    """Jobs with a result.json, and job folders (with a Hydra record) that have none yet."""
    jobs, unfinished = [], []
    for hydra_dir in sorted(sweep.glob("**/.hydra")):
        folder = hydra_dir.parent
        if folder == sweep:
            continue
        path = folder / RESULT_FILE
        if not path.exists():
            unfinished.append(folder)
            continue
        try:
            jobs.append(Job(folder, Result.read(path)))
        except (OSError, ResultError):
            unfinished.append(folder)
    return jobs, unfinished


def expected_overrides(sweep: Path) -> list[frozenset[str]]:
    """Each job's override set, from the sweep's multirun.yaml (what Hydra was asked to run)."""
    path = sweep / "multirun.yaml"
    if not path.exists():
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(path)
    overrides = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    if params:  # the command line wins over the sweeper's params (Hydra's BasicSweeper does the same)
        given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        overrides += [f"{key}={value}" for key, value in params.items() if str(key).lstrip("+~") not in given]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - another sweeper's syntax: just skip the completeness check
        return []
    return [frozenset(job) for batch in batches for job in batch]


def _job_overrides(folder: Path) -> frozenset[str]:
    path = folder / ".hydra" / "overrides.yaml"
    return frozenset(OmegaConf.load(path)) if path.exists() else frozenset()


def _show(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _distinguishing(identities: list[dict]) -> list[str]:
    """Keys that all of these identities have and on which they do not all agree."""
    if not identities:
        return []
    shared = set.intersection(*(set(i) for i in identities))
    return sorted(k for k in shared if len({json.dumps(i[k], sort_keys=True) for i in identities}) > 1)


def assign_settings(jobs: list[Job]) -> None:
    """Set each job's row setting and column label from the keys on which it differs from the other
    jobs of its dataset x model (method keys among jobs of the same method)."""
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.result.dataset, job.result.model), []).append(job)
    for group in groups.values():
        identities = {id(j): j.identity for j in group}
        general = _distinguishing(
            [
                {k: v for k, v in identities[id(j)].items() if not k.startswith("method.")}
                for j in group
                if identities[id(j)]
            ]
        )
        by_method: dict[str, list[Job]] = {}
        for job in group:
            by_method.setdefault(job.result.method, []).append(job)
        for method, members in by_method.items():
            own = _distinguishing(
                [
                    {k: v for k, v in identities[id(j)].items() if k.startswith("method.")}
                    for j in members
                    if identities[id(j)]
                ]
            )
            for job in members:
                ident = identities[id(job)]
                job.setting = ",".join(f"{k}={_show(ident[k])}" for k in general if k in ident)
                variant = ",".join(f"{k[len('method.') :]}={_show(ident[k])}" for k in own if k in ident)
                job.column = f"{method} [{variant}]" if variant else method


def _column_order(label: str) -> tuple[int, str]:
    method = label.split(" [", 1)[0]
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), label)


def build(sweep: Path) -> Report:
    jobs, unfinished = find_jobs(sweep)
    assign_settings(jobs)
    cells: dict[Row, dict[str, Cell]] = {}
    metric_names: set[str] = set()
    row_metric: dict[Row, str] = {}
    methods: set[str] = set()
    failed, interrupted = [], []
    for job in jobs:
        r = job.result
        if r.status == Status.RUNNING:
            unfinished.append(job.folder)  # still running (or its writer died): resumes when rerun
            continue
        methods.add(job.column)
        row_metric[job.key] = r.metric_name
        cell = cells.setdefault(job.key, {}).setdefault(job.column, Cell())
        if job.done:
            metric_names.add(r.metric_name)
            cell.values.append(_display(r.test_metric, r.metric_name))
            cell.seeds.append(r.seed)
            wall = r.wall_time_s
            cell.hours_offline.append((wall.offline or 0.0) / 3600)
            cell.hours_train.append(((wall.train or 0.0) + (wall.eval or 0.0)) / 3600)
        elif r.status == Status.INTERRUPTED:
            # Stopped from outside (signal, preemption): not a failure, it resumes from its checkpoint.
            cell.interrupted += 1
            interrupted.append(job)
            unfinished.append(job.folder)
        else:
            cell.failed += 1
            failed.append(job)
    seen = {_job_overrides(job.folder) for job in jobs} | {_job_overrides(f) for f in unfinished}
    missing = sorted(",".join(sorted(o)) for o in expected_overrides(sweep) if o not in seen)
    ordered = sorted(methods, key=_column_order)
    title = next((j.result.experiment for j in jobs if j.result.experiment), None) or sweep.name
    return Report(
        sweep,
        title,
        metric_names,
        row_metric,
        ordered,
        dict(sorted(cells.items())),
        failed,
        sorted(unfinished),
        missing,
        jobs,
        interrupted,
    )


BASELINE = "ce"


@dataclass
class Paired:
    """A method against the handcrafted loss on the seeds both finished (same seed = same theta_0,
    batches and split): the mean difference (method - CE; negative is better) and its wins."""

    method: str
    n: int
    mean_difference: float
    wins: int


def paired_with_baseline(by_method: dict[str, Cell]) -> list[Paired]:
    baseline = by_method.get(BASELINE)
    if baseline is None or not baseline.values:
        return []
    reference = dict(zip(baseline.seeds, baseline.values))
    pairs = []
    for method, cell in by_method.items():
        if method == BASELINE:
            continue
        common = [(value, reference[seed]) for seed, value in zip(cell.seeds, cell.values) if seed in reference]
        if common:
            differences = [value - base for value, base in common]
            pairs.append(Paired(method, len(common), statistics.fmean(differences), sum(d < 0 for d in differences)))
    return pairs


def _fmt(cell: Cell | None) -> str:
    if cell is None or (not cell.values and not cell.failed and not cell.interrupted):
        return "–"
    text = f"{cell.mean:.2f} ± {cell.std:.2f}" if cell.values else "failed" if cell.failed else "interrupted"
    extra = (
        f"n={len(cell.values)}"
        + (f", {cell.failed} failed" if cell.failed else "")
        + (f", {cell.interrupted} interrupted" if cell.interrupted else "")
    )
    return f"{text} ({extra})"


# Run-time units: the largest mean total of the table picks one unit for every cell, so the
# cells compare at a glance (a CE job of a smoke sweep is 0.03 s, a CIFAR table's jobs are hours).
TIME_UNITS = (("seconds", 1.0, 120.0), ("minutes", 60.0, 2 * 3600.0), ("hours", 3600.0, math.inf))


def time_unit(report: Report) -> tuple[str, float]:
    """The run-time table's unit and its length in seconds."""
    totals = [
        3600 * (statistics.fmean(cell.hours_offline) + statistics.fmean(cell.hours_train))
        for by_method in report.cells.values()
        for cell in by_method.values()
        if cell.hours_train
    ]
    largest = max(totals, default=0.0)
    return next((name, seconds) for name, seconds, below in TIME_UNITS if largest < below)


def _duration(value: float) -> str:
    """Plain decimals, never 6.98e-06: two of them below 100, none from 100 up."""
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _run_time(cell: Cell | None, seconds_per_unit: float) -> str:
    if cell is None or not cell.hours_train:
        return "–"
    scale = 3600 / seconds_per_unit
    offline, train = scale * statistics.fmean(cell.hours_offline), scale * statistics.fmean(cell.hours_train)
    return f"{_duration(offline + train)} ({_duration(offline)} + {_duration(train)})"


@dataclass
class Table:
    """One table of the report as text cells: results.md prints it, W&B gets it as a wandb.Table."""

    key: str  # short name: the W&B key is results/<key>
    caption: str
    columns: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) of each row's best cell


def metric_label(report: Report) -> str:
    return " / ".join(METRIC_LABEL.get(m, m) for m in sorted(report.metric_names)) or "test metric"


def _row_columns(report: Report) -> list[str]:
    """dataset, model, and the setting when any row has one (only seeds are pooled)."""
    return ["dataset", "model", "setting"] if report.has_settings else ["dataset", "model"]


def _row_values(report: Report, row: Row) -> list[str]:
    return [row[0], row[1], row[2] or "–"] if report.has_settings else [row[0], row[1]]


def results_table(report: Report) -> Table:
    pooled = (
        " Only seeds are pooled: jobs that differ in any other setting are separate rows (setting) "
        "or columns ([method settings])."
        if report.has_settings or any("[" in m for m in report.methods)
        else ""
    )
    head = _row_columns(report)
    table = Table(
        "table",
        f"Final {metric_label(report)}, mean ± standard deviation over finished seeds (n); "
        "lower is better, best per row in **bold**." + pooled,
        [*head, *report.methods],
        [],
    )
    for row, by_method in report.cells.items():
        best = report.best(row)
        table.rows.append([*_row_values(report, row), *(_fmt(by_method.get(method)) for method in report.methods)])
        if best is not None:
            table.bold.add((len(table.rows) - 1, len(head) + report.methods.index(best)))
    return table


def paired_table(report: Report) -> Table:
    table = Table(
        "paired",
        f"Per seed, method minus {BASELINE} (negative: the method is better); wins: seeds where it is lower.",
        [*_row_columns(report), "method", "seeds", "mean difference", "wins"],
        [],
    )
    for row, by_method in report.cells.items():
        for p in paired_with_baseline(by_method):
            table.rows.append(
                [*_row_values(report, row), p.method, str(p.n), f"{p.mean_difference:+.2f}", f"{p.wins}/{p.n}"]
            )
    return table


def run_time_table(report: Report) -> Table:
    unit, seconds = time_unit(report)
    table = Table(
        "run_time",
        f"{unit.capitalize()} per job, mean over finished seeds: total (offline meta-learning + "
        "training and evaluation).",
        [*_row_columns(report), *report.methods],
        [],
    )
    for row, by_method in report.cells.items():
        table.rows.append([*_row_values(report, row), *(_run_time(by_method.get(m), seconds) for m in report.methods)])
    return table


def tables(report: Report) -> list[Table]:
    """The report's tables, in the order results.md shows them (paired only when there is a pair)."""
    paired = paired_table(report)
    return [results_table(report), *([paired] if paired.rows else []), run_time_table(report)]


def _markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for i, row in enumerate(table.rows):
        cells = [f"**{text}**" if (i, j) in table.bold else text for j, text in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


HEADINGS = {"paired": f"## Paired with {BASELINE}", "run_time": "## Run time"}


def markdown(report: Report) -> str:
    lines = [f"# Results: {report.title}"]
    for table in tables(report):
        if table.key in HEADINGS:
            lines += ["", HEADINGS[table.key]]
        lines += ["", table.caption, "", *_markdown_table(table)]
    if report.failed or report.unfinished or report.missing:
        lines += ["", "## Incomplete", ""]
        for job in report.failed:
            lines.append(f"- failed: `{job.folder.relative_to(report.sweep)}`: {job.result.error or 'unknown error'}")
        for job in report.interrupted:
            lines.append(
                f"- interrupted: `{job.folder.relative_to(report.sweep)}`: "
                f"{job.result.error or 'stopped from outside'}; resume: `{resume_command(job)}`"
            )
        stopped = {job.folder for job in report.interrupted}
        for folder in report.unfinished:
            if folder not in stopped:
                lines.append(f"- not finished: `{folder.relative_to(report.sweep)}`")
        for overrides in report.missing:
            lines.append(f"- not started: `{overrides}`")
        if report.interrupted:
            lines += [
                "",
                "An interrupted job (stopped by a signal, a preemption or a time limit) is no failure: "
                "started again in its folder it resumes from its last checkpoint (or starts over if it "
                "wrote none). Rerun the sweep's command with "
                f"`hydra.sweep.dir={shlex.quote(str(report.sweep))}` (finished jobs are skipped, "
                "interrupted ones resume), or one job with its command above.",
            ]
    return "\n".join(lines) + "\n"


def resume_command(job: Job) -> str:
    """The command that resumes one job in its folder: its own overrides, its folder as the run dir."""
    overrides = job.result.overrides
    if overrides is None:  # a job run outside Hydra's command line: only its folder is known
        return f"python main.py <its overrides> hydra.run.dir={shlex.quote(str(job.folder))}"
    return shlex.join(["python", "main.py", *overrides, f"hydra.run.dir={job.folder}"])


def csv_text(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "dataset",
            "model",
            "setting",
            "method",
            "metric",
            "n_finished",
            "n_failed",
            "n_interrupted",
            "mean",
            "std",
            "values",
            "seeds",
            "hours_offline",
            "hours_train",
        ]
    )
    for (dataset, model, setting), by_method in report.cells.items():
        for method in report.methods:
            cell = by_method.get(method)
            if cell is None:
                continue
            writer.writerow(
                [
                    dataset,
                    model,
                    setting,
                    method,
                    report.row_metric[(dataset, model, setting)],
                    len(cell.values),
                    cell.failed,
                    cell.interrupted,
                    f"{cell.mean:.6g}",
                    f"{cell.std:.6g}",
                    " ".join(f"{v:.6g}" for v in cell.values),
                    " ".join(str(seed) for seed in cell.seeds),
                    f"{statistics.fmean(cell.hours_offline):.6g}" if cell.hours_offline else "",
                    f"{statistics.fmean(cell.hours_train):.6g}" if cell.hours_train else "",
                ]
            )
    return out.getvalue()


def _tex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%")


def latex(report: Report) -> str:
    settings = report.has_settings
    cols = ("lll" if settings else "ll") + "c" * len(report.methods)
    lines = [
        r"\begin{tabular}{" + cols + "}",
        r"\toprule",
        "Dataset & Model & "
        + ("Setting & " if settings else "")
        + " & ".join(_tex_escape(m) for m in report.methods)
        + r" \\",
        r"\midrule",
    ]
    for row, by_method in report.cells.items():
        best = report.best(row)
        cells = []
        for method in report.methods:
            cell = by_method.get(method)
            if cell is None or not cell.values:
                cells.append("--")
                continue
            text = f"{cell.mean:.2f} $\\pm$ {cell.std:.2f}"
            cells.append(rf"\textbf{{{text}}}" if method == best else text)
        lead = [row[0], row[1]] + ([row[2] or "--"] if settings else [])
        lines.append(" & ".join(_tex_escape(x) for x in lead) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def figures(report: Report) -> list[Path]:
    """Mean ± std test curves per dataset x model, and AdaLFL's learned-loss evolution."""
    from adalfl.sweep.figures import learned_loss_figure, test_curves_figure

    folder = report.sweep / "figures"
    written = []
    for row in report.cells:
        done = [j for j in report.jobs if j.key == row and j.done]
        if not done:
            continue
        folder.mkdir(exist_ok=True)
        name = f"{row[0]}_{row[1]}" + (f"_{_slug(row[2])}" if row[2] else "")
        title = f"{row[0]} / {row[1]}" + (f" ({row[2]})" if row[2] else "")
        written.append(test_curves_figure(done, report.methods, folder / f"curves_{name}.png", title))
        adalfl = sorted(
            (j for j in done if j.result.method == "adalfl"),
            key=lambda j: (j.column != "adalfl", j.column, j.result.seed),
        )
        curves = next(
            (j.folder / "learned_loss_curves.json" for j in adalfl if (j.folder / "learned_loss_curves.json").exists()),
            None,
        )
        if curves is not None:
            written.append(
                learned_loss_figure(curves, folder / f"learned_loss_{name}.png", f"AdaLFL learned loss, {title}")
            )
    return written


def _slug(text: str) -> str:
    """A file-name-safe form of a setting; long ones end in a hash so two settings never share a file."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", text)
    return slug if len(slug) <= 80 else slug[:60] + "_" + hashlib.sha256(text.encode()).hexdigest()[:12]


def write(sweep: Path, with_figures: bool = True, logger: Mapping[str, Any] | None = None) -> Report:
    """Build the report and write its files into the sweep folder; with a W&B ``logger`` node (the
    sweep's ``cfg.logger``), also send the tables and the figures written now to the sweep's W&B run."""
    report = build(sweep)
    csv_body = csv_text(report)
    atomic_write_bytes(sweep / "results.md", markdown(report).encode())
    atomic_write_bytes(sweep / "results.csv", csv_body.encode())
    atomic_write_bytes(sweep / "results.tex", latex(report).encode())
    written = figures(report) if with_figures else []
    if logger is not None:
        from adalfl.track.wandb_report import publish

        publish(report, tables(report), csv_body, written, logger)
    return report
