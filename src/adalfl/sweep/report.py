"""Turn a sweep folder into the paper's tables and figures.

Reads every job's ``result.json`` (and ``metrics.jsonl`` for curves) under a sweep folder and
writes, into that folder:

* ``results.md`` / ``results.csv`` / ``results.tex``: rows dataset x model, columns methods, the
  final test metric as mean ± standard deviation over finished seeds, the best per row in bold,
  the number of finished seeds; failed, unfinished and never-started jobs listed; and the
  run-time table (time per job and method, mean over seeds, split into the offline phase and
  training, in seconds, minutes or hours as fits the table).
* ``figures/curves_<dataset>_<model>.png``: test metric against training step per method, mean
  with a ± std band over seeds.
* ``figures/learned_loss_<dataset>_<model>.png``: AdaLFL's learned loss through training.

With W&B on (``logger`` given to ``write``), the same tables and figures also go to the sweep's one
W&B run (``adalfl.track.wandb_report``).

Works on partial sweeps, so it can be run at any time: ``python -m adalfl.report <sweep folder>``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from adalfl.utils import atomic_write_bytes

METHOD_ORDER = ["ce", "ml3", "taylorglo", "metalr", "adalfl"]
METRIC_LABEL = {"error_rate": "test error rate (%)", "mse": "test MSE"}


@dataclass
class Job:
    folder: Path
    result: dict

    @property
    def key(self) -> tuple[str, str]:
        return self.result["dataset"], self.result["model"]

    @property
    def done(self) -> bool:
        value = self.result.get("test_metric")
        return self.result.get("status") == "done" and value is not None and math.isfinite(value)


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # finished seeds, in display units
    seeds: list[int] = field(default_factory=list)  # the seed of each value, for paired comparisons
    failed: int = 0
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
    row_metric: dict[tuple[str, str], str]
    methods: list[str]
    cells: dict[tuple[str, str], dict[str, Cell]]
    failed: list[Job]
    unfinished: list[Path]
    missing: list[str]

    def best(self, row: tuple[str, str]) -> str | None:
        finished = {m: c.mean for m, c in self.cells[row].items() if c.values}
        return min(finished, key=finished.get) if finished else None  # every metric: lower is better


def _display(value: float, metric: str) -> float:
    return 100.0 * value if metric == "error_rate" else value


def find_jobs(sweep: Path) -> tuple[list[Job], list[Path]]:
    """Jobs with a result.json, and job folders (with a Hydra record) that have none yet."""
    jobs, unfinished = [], []
    for hydra_dir in sorted(sweep.glob("**/.hydra")):
        folder = hydra_dir.parent
        if folder == sweep:
            continue
        path = folder / "result.json"
        if not path.exists():
            unfinished.append(folder)
            continue
        try:
            jobs.append(Job(folder, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
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
    if params:
        overrides += [f"{key}={value}" for key, value in params.items()]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - another sweeper's syntax: just skip the completeness check
        return []
    return [frozenset(job) for batch in batches for job in batch]


def _job_overrides(folder: Path) -> frozenset[str]:
    path = folder / ".hydra" / "overrides.yaml"
    return frozenset(OmegaConf.load(path)) if path.exists() else frozenset()


def build(sweep: Path) -> Report:
    jobs, unfinished = find_jobs(sweep)
    cells: dict[tuple[str, str], dict[str, Cell]] = {}
    metric_names: set[str] = set()
    row_metric: dict[tuple[str, str], str] = {}
    methods: set[str] = set()
    failed = []
    for job in jobs:
        r = job.result
        methods.add(r["method"])
        row_metric[job.key] = r["metric_name"]
        cell = cells.setdefault(job.key, {}).setdefault(r["method"], Cell())
        if job.done:
            metric_names.add(r["metric_name"])
            cell.values.append(_display(r["test_metric"], r["metric_name"]))
            cell.seeds.append(int(r.get("seed", -1)))
            wall = r.get("wall_time_s", {})
            cell.hours_offline.append(wall.get("offline", 0.0) / 3600)
            cell.hours_train.append((wall.get("train", 0.0) + wall.get("eval", 0.0)) / 3600)
        else:
            cell.failed += 1
            failed.append(job)
    seen = {_job_overrides(job.folder) for job in jobs} | {_job_overrides(f) for f in unfinished}
    missing = sorted(",".join(sorted(o)) for o in expected_overrides(sweep) if o not in seen)
    ordered = [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))
    title = next((j.result.get("experiment") for j in jobs if j.result.get("experiment")), None) or sweep.name
    return Report(sweep, title, metric_names, row_metric, ordered, dict(sorted(cells.items())), failed, unfinished, missing)


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
    if cell is None or (not cell.values and not cell.failed):
        return "–"
    text = f"{cell.mean:.2f} ± {cell.std:.2f}" if cell.values else "failed"
    extra = f"n={len(cell.values)}" + (f", {cell.failed} failed" if cell.failed else "")
    return f"{text} ({extra})"


# Run-time units: the largest mean total of the table picks one unit for every cell, so the
# cells compare at a glance (a CE job of a smoke sweep is 0.03 s, a CIFAR table's jobs are hours).
TIME_UNITS = (("seconds", 1.0, 120.0), ("minutes", 60.0, 2 * 3600.0), ("hours", 3600.0, math.inf))


def time_unit(report: Report) -> tuple[str, float]:
    """The run-time table's unit and its length in seconds."""
    totals = [
        3600 * (statistics.fmean(cell.hours_offline) + statistics.fmean(cell.hours_train))
        for by_method in report.cells.values() for cell in by_method.values() if cell.hours_train
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


def results_table(report: Report) -> Table:
    table = Table("table", f"Final {metric_label(report)}, mean ± standard deviation over finished seeds (n); "
                  "lower is better, best per row in **bold**.", ["dataset", "model", *report.methods], [])
    for row, by_method in report.cells.items():
        best = report.best(row)
        table.rows.append([row[0], row[1], *(_fmt(by_method.get(method)) for method in report.methods)])
        if best is not None:
            table.bold.add((len(table.rows) - 1, 2 + report.methods.index(best)))
    return table


def paired_table(report: Report) -> Table:
    table = Table("paired", f"Per seed, method minus {BASELINE} (negative: the method is better); "
                  "wins: seeds where it is lower.", ["dataset", "model", "method", "seeds", "mean difference", "wins"], [])
    for row, by_method in report.cells.items():
        for p in paired_with_baseline(by_method):
            table.rows.append([row[0], row[1], p.method, str(p.n), f"{p.mean_difference:+.2f}", f"{p.wins}/{p.n}"])
    return table


def run_time_table(report: Report) -> Table:
    unit, seconds = time_unit(report)
    table = Table("run_time", f"{unit.capitalize()} per job, mean over finished seeds: total (offline meta-learning + "
                  "training and evaluation).", ["dataset", "model", *report.methods], [])
    for row, by_method in report.cells.items():
        table.rows.append([row[0], row[1], *(_run_time(by_method.get(m), seconds) for m in report.methods)])
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
            lines.append(f"- failed: `{job.folder.relative_to(report.sweep)}`: {job.result.get('error', 'unknown error')}")
        for folder in report.unfinished:
            lines.append(f"- not finished: `{folder.relative_to(report.sweep)}`")
        for overrides in report.missing:
            lines.append(f"- not started: `{overrides}`")
    return "\n".join(lines) + "\n"


def csv_text(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["dataset", "model", "method", "metric", "n_finished", "n_failed", "mean", "std", "values",
                     "hours_offline", "hours_train"])
    for (dataset, model), by_method in report.cells.items():
        for method in report.methods:
            cell = by_method.get(method)
            if cell is None:
                continue
            writer.writerow([
                dataset, model, method, report.row_metric[(dataset, model)], len(cell.values), cell.failed,
                f"{cell.mean:.6g}", f"{cell.std:.6g}", " ".join(f"{v:.6g}" for v in cell.values),
                f"{statistics.fmean(cell.hours_offline):.6g}" if cell.hours_offline else "",
                f"{statistics.fmean(cell.hours_train):.6g}" if cell.hours_train else "",
            ])
    return out.getvalue()


def _tex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%")


def latex(report: Report) -> str:
    cols = "ll" + "c" * len(report.methods)
    lines = [
        r"\begin{tabular}{" + cols + "}",
        r"\toprule",
        "Dataset & Model & " + " & ".join(_tex_escape(m) for m in report.methods) + r" \\",
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
        lines.append(f"{_tex_escape(row[0])} & {_tex_escape(row[1])} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def figures(report: Report) -> list[Path]:
    """Mean ± std test curves per dataset x model, and AdaLFL's learned-loss evolution."""
    from adalfl.sweep.figures import learned_loss_figure, test_curves_figure

    jobs, _ = find_jobs(report.sweep)
    folder = report.sweep / "figures"
    written = []
    for row in report.cells:
        done = [j for j in jobs if j.key == row and j.done]
        if not done:
            continue
        folder.mkdir(exist_ok=True)
        name = f"{row[0]}_{row[1]}"
        written.append(test_curves_figure(done, report.methods, folder / f"curves_{name}.png"))
        adalfl = sorted((j for j in done if j.result["method"] == "adalfl"), key=lambda j: j.result["seed"])
        curves = next((j.folder / "learned_loss_curves.json" for j in adalfl if (j.folder / "learned_loss_curves.json").exists()), None)
        if curves is not None:
            written.append(learned_loss_figure(curves, folder / f"learned_loss_{name}.png", f"AdaLFL learned loss, {row[0]} / {row[1]}"))
    return written


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
