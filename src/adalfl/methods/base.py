"""The small interface every method implements; the training loop only talks to this."""

from __future__ import annotations

from typing import Callable, Literal, Union

import torch
from torch import nn

from adalfl.train.job import Job

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

    def setup(self, job: Job, model: nn.Module) -> None:
        """Build method state (learned loss, meta optimiser) before the offline phase or a resume."""

    def offline(self, job: Job, model: nn.Module) -> None:
        """Offline meta-learning (e.g. Algorithm 1). The default has none."""

    def train_step(self, job: Job, model: nn.Module, optimizer: torch.optim.Optimizer) -> Stats:
        raise NotImplementedError

    def observe(self, job: Job, model: nn.Module, step: int, moment: Moment) -> None:
        """Called at the start of training, at every evaluation and at the end: plots, saved state."""

    def check(self, job: Job, step: int, record: dict) -> None:
        """Called with every logged training record; raise to fail the job (e.g. a learned loss
        that no longer gives the model any gradient)."""

    def summary(self) -> dict:
        """Final facts about the method for result.json (e.g. the learned loss's health)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state


class FixedLossMethod(Method):
    """Plain training with a loss that does not change during training: the handcrafted loss, or a
    learned loss frozen after an offline phase (ML3, TaylorGLO-style)."""

    def base_loss(self, job: Job, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return job.task.loss(output, target)

    def train_step(self, job: Job, model: nn.Module, optimizer: torch.optim.Optimizer) -> Stats:
        x, y = job.train_batch()
        output = model(x)
        loss = self.base_loss(job, output, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats: Stats = {"train/base_loss": loss.detach()}
        stats["train/task_loss"] = job.task.loss(output.detach(), y) if self.learned else stats["train/base_loss"]
        if self.learned:  # watched for a dead loss; the gradients stay in .grad until the next step
            params = [p for p in model.parameters() if p.grad is not None]
            stats["train/base_grad_norm"] = lambda: torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return stats

    @property
    def learned(self) -> bool:
        return type(self).base_loss is not FixedLossMethod.base_loss
