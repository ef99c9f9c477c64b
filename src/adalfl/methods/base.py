"""Plain training with a fixed loss: the base of the handcrafted-loss baseline and of the methods
whose loss is learned offline and then frozen. The ``Method`` interface itself is in adalfl.core."""

from __future__ import annotations

import torch
from torch import nn

from adalfl.core import JobContext, Method, Stats


class FixedLossMethod(Method):
    """Plain training with a loss that does not change during training: the handcrafted loss, or a
    learned loss frozen after an offline phase (ML3, TaylorGLO-style)."""

    def base_loss(self, job: JobContext, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return job.task.loss(output, target)

    def train_step(self, job: JobContext, model: nn.Module, optimizer: torch.optim.Optimizer) -> Stats:
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
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
            )
        return stats

    @property
    def learned(self) -> bool:
        return type(self).base_loss is not FixedLossMethod.base_loss
