"""What every learned-loss method shares: building the loss network from config, watching its
shape during training (PNG plots, W&B images), and saving phi."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from adalfl.losses import Task
from adalfl.losses.learned import OutputWiseLoss
from adalfl.methods.base import FixedLossMethod, Moment
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
        last = self.snapshots[-1]["step"] if self.snapshots else 0
        # Plots happen at evaluations: take the first one at or past each multiple of plot_every.
        due = moment in ("start", "end") or (self.plot_every > 0 and step // self.plot_every > last // self.plot_every)
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


def plot_offline_phase(job: Job, loss: OutputWiseLoss, before: dict, after: dict, name: str) -> None:
    """The loss before and after an offline search (``step`` = offline steps or generations), as
    ``learned_loss_offline.png`` and a W&B image: the one picture of what an offline method learned."""
    path = plot_learned_loss([before, after], job.task.classification, job.out_dir / "learned_loss_offline.png",
                             f"{job.title}: {name}")
    job.tracker.image("plots/learned_loss_offline", path, "offline", int(after["step"]))
    torch.save(loss.state_dict(), job.out_dir / "learned_loss_offline.pt")


class OfflineLearnedLoss(FixedLossMethod):
    """A loss learned in the offline phase, then frozen: the base model (the job's fresh theta_0) is
    trained with it by plain ``torch.optim.SGD`` for the whole budget (ML3, TaylorGLO-style).

    Subclasses build ``self.loss`` in ``build_loss`` and learn it in ``search``. The loss is frozen
    (``requires_grad=False``) once learned, so base steps never accumulate gradients into it.
    """

    def __init__(self, name: str, plot_every: int = 0) -> None:
        super().__init__(name)
        self.watcher = LossWatcher(plot_every)
        self.loss: OutputWiseLoss | None = None

    def build_loss(self, job: Job) -> OutputWiseLoss:
        raise NotImplementedError

    def search(self, job: Job, loss: OutputWiseLoss) -> tuple[str, int]:
        """Learn the loss in place. Returns a short description for the offline plot's title and
        the length of the search (offline steps or generations) to label the learned curve."""
        raise NotImplementedError

    def setup(self, job: Job, model: nn.Module) -> None:
        self.loss = self.build_loss(job)

    def offline(self, job: Job, model: nn.Module) -> None:
        assert self.loss is not None
        before = loss_curves(self.loss, job.task, 0)
        description, length = self.search(job, self.loss)
        after = loss_curves(self.loss, job.task, length)
        plot_offline_phase(job, self.loss, before, after, description)
        self.freeze()

    def freeze(self) -> None:
        assert self.loss is not None
        self.loss.requires_grad_(False)

    def base_loss(self, job: Job, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert self.loss is not None
        return self.loss(output, target)

    def observe(self, job: Job, model: nn.Module, step: int, moment: Moment) -> None:
        assert self.loss is not None
        self.watcher.observe(job, self.loss, step, moment)

    def state_dict(self) -> dict:
        assert self.loss is not None
        return {"loss": self.loss.state_dict(), "watcher": self.watcher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        assert self.loss is not None
        self.loss.load_state_dict(state["loss"])
        self.watcher.load_state_dict(state["watcher"])
        self.freeze()  # a checkpoint is only ever written after the offline phase
