"""PNG figures written into the job folder (and sent to W&B as images)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from adalfl.track.metrics import Tracker  # noqa: E402


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
