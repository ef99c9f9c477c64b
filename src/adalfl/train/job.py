"""Everything one job's methods and loop share, built once by adalfl.app."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from adalfl.data import Batch, BatchSampler, Data
from adalfl.losses import Task
from adalfl.track.metrics import Tracker
from adalfl.train import preemption
from adalfl.utils import PhaseTimer

OptimizerFactory = Callable[[list[nn.Parameter]], tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]]


@dataclass
class Job:
    cfg: DictConfig
    out_dir: Path
    device: torch.device
    task: Task
    data: Data
    tracker: Tracker
    build_model: Callable[[], nn.Module]  # a fresh model on the job's device
    build_optimizer: OptimizerFactory  # the configured base optimiser and its schedule
    train_batches: BatchSampler
    val_batches: BatchSampler
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

    @property
    def title(self) -> str:
        from adalfl.config import model_name

        return f"{self.cfg.dataset.name} / {model_name(self.cfg)} / {self.cfg.method.name} / seed {self.cfg.seed}"
