"""What every learned-loss method shares: building the loss network from config, watching its
shape during training (PNG plots, W&B images), and saving phi."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from adalfl.losses import Task
from adalfl.losses.learned import OutputWiseLoss
from adalfl.methods.base import Moment
from adalfl.track.plots import learned_loss as plot_learned_loss
from adalfl.train.job import Job
from adalfl.utils import atomic_write_json


@dataclass
class LossNetConfig:
    """The AdaLFL loss network l_phi: R^2 -> R. The paper fixes two hidden layers of 40 units and
    the smooth leaky ReLU; beta, gamma, the output activation and the initialisation are not
    stated there, and the defaults below are this suite's choice."""

    hidden: List[int] = field(default_factory=lambda: [40, 40])
    activation: str = "smooth_leaky_relu"  # smooth_leaky_relu | relu | softplus | none
    output_activation: str = "softplus"
    beta: float = 10.0
    gamma: float = 0.01
    init: str = "default"  # default (PyTorch's) | xavier


def loss_curves(loss: OutputWiseLoss, task: Task, step: int) -> dict:
    """The learned loss's shape at one moment, as plain lists (stored in checkpoints)."""
    device = next(loss.parameters()).device
    if task.classification:
        x = torch.linspace(0, 1, 101, device=device)
        return {"step": step, "x": x.tolist(), "target_1": loss.curve(x, 1.0).tolist(), "target_0": loss.curve(x, 0.0).tolist()}
    x = torch.linspace(-3, 3, 121, device=device)
    return {"step": step, "x": x.tolist(), "target_0": loss.curve(x, 0.0).tolist()}


class LossWatcher:
    """Snapshots l_phi at the start of training, every ``plot_every`` steps and at the end; writes
    ``learned_loss/step_*.png``, ``learned_loss_evolution.png``, ``learned_loss_curves.json`` and
    ``learned_loss.pt`` (phi)."""

    def __init__(self, plot_every: int) -> None:
        self.plot_every = int(plot_every)
        self.snapshots: list[dict] = []

    def observe(self, job: Job, loss: OutputWiseLoss, step: int, moment: Moment) -> None:
        due = moment in ("start", "end") or (self.plot_every > 0 and step % self.plot_every == 0)
        if not due or any(s["step"] == step for s in self.snapshots):
            return
        snap = loss_curves(loss, job.task, step)
        self.snapshots.append(snap)
        folder = job.out_dir / "learned_loss"
        folder.mkdir(exist_ok=True)
        path = plot_learned_loss([snap], job.task.classification, folder / f"step_{step:07d}.png", f"{job.title}, step {step}")
        job.tracker.image("plots/learned_loss", path, "train", step)
        if moment == "start":
            torch.save(loss.state_dict(), job.out_dir / "learned_loss_start.pt")
        if moment == "end":
            torch.save(loss.state_dict(), job.out_dir / "learned_loss.pt")
            curves = {"classification": job.task.classification, "snapshots": self.snapshots}
            atomic_write_json(job.out_dir / "learned_loss_curves.json", curves)  # for sweep figures
            evolution = plot_learned_loss(
                self.snapshots, job.task.classification, job.out_dir / "learned_loss_evolution.png", job.title
            )
            job.tracker.image("plots/learned_loss_evolution", evolution, "train", step)

    def state_dict(self) -> dict:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.snapshots = list(state["snapshots"])


def build_loss(task: Task, pointwise: nn.Module, device: torch.device) -> OutputWiseLoss:
    return OutputWiseLoss(task, pointwise).to(device)
