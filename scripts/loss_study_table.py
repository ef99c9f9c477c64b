"""Summarise loss-study runs: one row per variant folder (each holding one job folder per seed).

    python scripts/loss_study_table.py multirun/loss_study/fashion_mnist/*

prints a Markdown table: seeds, mean +- std of the final test metric, the worst seed, and how many
seeds ended with an unhealthy learned loss (a confident wrong class charged nothing: result.json's
loss_health.free_wrong > 0). Used for docs/loss_study.md.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from adalfl.result import Result, Status


def summarise(variant: Path) -> str | None:
    results = [Result.read(p) for p in sorted(variant.glob("**/result.json"))]
    done = [r for r in results if r.status == Status.DONE]
    if not results:
        return None
    metrics = [float(r.test_metric) for r in done]
    unhealthy = sum(1 for r in done if r.loss_health is not None and r.loss_health.free_wrong > 0)
    scales = [r.loss_health.scale for r in done if r.loss_health is not None]
    mean = statistics.mean(metrics) if metrics else float("nan")
    std = statistics.stdev(metrics) if len(metrics) > 1 else 0.0
    worst = max(metrics) if metrics else float("nan")
    interrupted = sum(1 for r in results if r.status == Status.INTERRUPTED)  # resume when rerun: not failures
    failed = len(results) - len(done) - interrupted
    per_seed = " ".join(f"{m:.4f}" for m in metrics)
    scale = f"{statistics.median(scales):.3g}" if scales else "-"
    seeds = f"{len(done)}{f' (+{failed} failed)' if failed else ''}{f' (+{interrupted} interrupted)' if interrupted else ''}"
    return f"| {variant.name} | {seeds} | {mean:.4f} ± {std:.4f} | {worst:.4f} | {unhealthy} | {scale} | {per_seed} |"


def main(folders: list[str]) -> None:
    print(
        "| variant | seeds | test metric, mean ± std | worst seed | seeds with unhealthy loss | median loss scale | per seed |"
    )
    print("|---|---|---|---|---|---|---|")
    for folder in folders:
        row = summarise(Path(folder))
        if row:
            print(row)


if __name__ == "__main__":
    main(sys.argv[1:])
