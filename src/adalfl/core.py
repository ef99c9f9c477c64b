"""What the training loop and the methods share: the job's typed context, the ``Method`` interface
and full-split evaluation.

It sits between the building blocks (data, losses, models, meta, track) and the two packages that
use it: ``adalfl.methods`` implements ``Method``, ``adalfl.train`` runs one. Neither imports the
other (scripts/check_imports.py holds the layer order). The context carries typed values taken
from the config once, by ``adalfl.app.build_job``, never the config itself: what a method reads is
written here, and a method's own settings come to it at construction from its config group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import nn

from adalfl import preemption
from adalfl.data import Batch, BatchSampler, Data, Split
from adalfl.losses import Task
from adalfl.track.metrics import Tracker
from adalfl.utils import PhaseTimer

OptimizerFactory = Callable[[list[nn.Parameter]], tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]]


@dataclass
class JobContext:
    """Everything one job's methods and loop share, built once by ``adalfl.app.build_job``."""

    title: str  # "<dataset> / <model> / <method> / seed <seed>", for log lines and plot titles
    seed: int
    out_dir: Path  # the job folder: plots, learned losses, checkpoints
    device: torch.device
    task: Task
    data: Data
    # The budget and its cadence (the dataset config's values).
    steps: int  # base training steps
    batch_size: int
    eval_batch_size: int
    log_interval: int  # base steps (offline phases: meta steps) between logged records
    eval_interval: int  # base steps between evaluations
    # The base optimiser: optimizer.lr before the schedule; the schedule itself is the scheduler
    # that build_optimizer returns with the optimiser.
    base_lr: float
    build_model: Callable[[], nn.Module]  # a fresh model on the job's device
    build_optimizer: OptimizerFactory  # the configured base optimiser and its schedule
    train_batches: BatchSampler
    val_batches: BatchSampler
    tracker: Tracker
    # Checkpoints: base steps (and offline units of work) between them, 0 for none; whether to
    # resume from one; the config identity each records (adalfl.train.folder.config_identity).
    checkpoint_every: int = 0
    resume: bool = True
    identity: dict[str, Any] = field(default_factory=dict)
    progress_bar: bool = False  # a tqdm bar when stderr is a terminal
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("adalfl"))
    # Set by the training loop while checkpoints are on: writes a full checkpoint now (model,
    # samplers, RNG, metrics offset and the method's state, its offline progress included).
    save_checkpoint: Optional[Callable[[], None]] = None

    def offline_boundary(self, due: bool) -> None:
        """Called by offline phases after each unit of work (a meta step, a CMA-ES candidate), the
        only points where their state is whole: checkpoint when ``due`` (periodic) or when a stop
        signal waits, then let that signal take effect. A preempted offline phase so loses at most
        one unit of work, and stops within one unit of the signal."""
        if self.save_checkpoint is not None and (due or preemption.requested()):
            self.save_checkpoint()
        preemption.deliver(checkpointed=self.save_checkpoint is not None)

    def train_batch(self) -> Batch:
        x, y = self.train_batches.next()
        return Batch(self.data.prepare(x, training=True), y)

    def val_batch(self) -> Batch:
        x, y = self.val_batches.next()
        return Batch(self.data.prepare(x, training=False), y)


Moment = Literal["start", "eval", "end"]
# What train_step returns: scalars to log, or callables giving them (evaluated on logged steps only).
Stats = dict[str, Union[torch.Tensor, Callable[[], torch.Tensor]]]


class Method:
    """A way of training: an optional offline phase, then one ``train_step`` per base step.

    ``train_step`` draws its own batches from the job (a meta-learning method needs a validation
    batch too), must leave the model's parameters updated by exactly one base optimiser step, and
    returns scalars to log; ``train/base_loss`` is required (the loop checks it is finite). A value
    may be a zero-argument callable: the loop evaluates it only on the steps it logs, so statistics
    that cost a little (norms over every parameter) are not paid on every step.
    """

    name: str = "method"

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, job: JobContext, model: nn.Module) -> None:
        """Build method state (learned loss, meta optimiser) before the offline phase or a resume."""

    def offline(self, job: JobContext, model: nn.Module) -> None:
        """Offline meta-learning (e.g. Algorithm 1). The default has none."""

    def train_step(self, job: JobContext, model: nn.Module, optimizer: torch.optim.Optimizer) -> Stats:
        raise NotImplementedError

    def observe(self, job: JobContext, model: nn.Module, step: int, moment: Moment) -> None:
        """Called at the start of training, at every evaluation and at the end: plots, saved state."""

    def check(self, job: JobContext, step: int, record: dict) -> None:
        """Called with every logged training record; raise to fail the job (e.g. a learned loss
        that no longer gives the model any gradient)."""

    def summary(self) -> dict:
        """Final facts about the method for result.json (e.g. the learned loss's health)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, data: Data, task: Task, batch_size: int) -> dict[str, float]:
    """Full-split evaluation in eval mode, batched, without gradients: the task metric and task
    loss averaged over the whole split (the loop's evaluations, TaylorGLO's fitness)."""
    was_training = model.training
    model.eval()
    metric_sum = torch.zeros((), dtype=torch.float64, device=split.y.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.y.device)
    for start in range(0, len(split), batch_size):
        x = data.prepare(split.x[start : start + batch_size], training=False)
        y = split.y[start : start + batch_size]
        out = model(x)
        metric_sum += task.metric_sum(out, y)
        loss_sum += task.loss(out, y).to(torch.float64) * y.shape[0]
    model.train(was_training)
    n = len(split)
    return {task.metric_name: (metric_sum / n).item(), "task_loss": (loss_sum / n).item()}
