"""PNG figures written into the job folder (and sent to W&B as images)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from adalfl.track.metrics import Tracker


def learning_curves(tracker: Tracker, metric_name: str, path: Path, title: str) -> Path:
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train/base_loss", "base loss"), ("train/task_loss", "task loss")):
        steps, values = tracker.series("train", key)
        if steps:
            ax_loss.plot(steps, values, label=label, linewidth=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend()
    for split in ("train", "val", "test"):
        steps, values = tracker.series("train", f"{split}/{metric_name}")
        if steps:
            ax_metric.plot(steps, values, label=split, marker=".", linewidth=1)
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel(metric_name)
    ax_metric.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def learned_loss(snapshots: list[dict], classification: bool, path: Path, title: str) -> Path:
    """l_phi over the prediction, one line per snapshot (colour = training step).

    Classification: over the predicted probability, for target 1 (solid) and target 0 (dashed).
    Regression: over the residual prediction - target, at target 0.
    Each snapshot is ``{"step", "x", "target_1", "target_0"}`` (regression uses only ``target_0``).
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    last = max((s["step"] for s in snapshots), default=0) or 1
    for snap in snapshots:
        colour = cmap(snap["step"] / last)
        if classification:
            ax.plot(snap["x"], snap["target_1"], color=colour, label=f"step {snap['step']}, y=1")
            ax.plot(snap["x"], snap["target_0"], color=colour, linestyle="--", label=f"step {snap['step']}, y=0")
        else:
            ax.plot(snap["x"], snap["target_0"], color=colour, label=f"step {snap['step']}")
    ax.set_xlabel("predicted probability" if classification else "residual (prediction - target)")
    ax.set_ylabel("learned loss l(prediction, target)")
    if len(snapshots) <= 6:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def meta_learning_rate(
    offline: tuple[list[int], list[float]], online: tuple[list[int], list[float]], path: Path, title: str
) -> Path:
    """The meta-learned base learning rate (log scale): over offline meta steps (Algorithm 3) on the
    left, over base training steps (Algorithm 4) on the right."""
    fig, (ax_off, ax_on) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (steps, values), label in ((ax_off, offline, "offline meta step"), (ax_on, online, "base step")):
        if steps:
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1)
            if min(values) > 0:
                ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("learning rate")
    ax_off.set_title("initialisation (Algorithm 3)", fontsize=9)
    ax_on.set_title("adaptation (Algorithm 4)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
