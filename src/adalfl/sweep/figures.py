"""Sweep-level figures: learning curves across seeds, and the learned loss through training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from adalfl.track.plots import learned_loss as plot_learned_loss
from adalfl.track.plots import plt


class SweepJob(Protocol):
    """What the figures read of a job (adalfl.sweep.report.Job). Described here, not imported:
    the report imports this module, and the two must not import each other."""

    folder: Path
    result: Any  # adalfl.train.folder.Result: its metric_name, method, dataset, model
    column: str


def _test_series(folder: Path, metric: str) -> dict[int, float]:
    series = {}
    with open(folder / "metrics.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            value = record.get(f"test/{metric}")
            if record.get("phase") == "train" and value is not None:
                series[record["step"]] = value
    return series


def test_curves_figure(jobs: Sequence[SweepJob], methods: list[str], path: Path, title: str | None = None) -> Path:
    """Test metric against step per method (a report column: a method, or a method with its own
    settings): mean over seeds with a ± std band."""
    metric = jobs[0].result.metric_name
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        runs = [_test_series(j.folder, metric) for j in jobs if (j.column or j.result.method) == method]
        runs = [r for r in runs if r]
        if not runs:
            continue
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        values = np.array([[r[s] for s in steps] for r in runs])
        if metric == "error_rate":
            values = 100 * values
        mean, std = values.mean(axis=0), values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
        ax.plot(steps, mean, label=f"{method} (n={len(runs)})")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("test error rate (%)" if metric == "error_rate" else "test MSE")
    ax.set_title(title or f"{jobs[0].result.dataset} / {jobs[0].result.model}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def learned_loss_figure(curves_file: Path, path: Path, title: str) -> Path:
    data = json.loads(curves_file.read_text())
    return plot_learned_loss(data["snapshots"], data["classification"], path, title)
