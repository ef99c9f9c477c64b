"""Full-split evaluation in eval mode, batched, without gradients."""

from __future__ import annotations

import torch
from torch import nn

from adalfl.data import Data, Split
from adalfl.losses import Task


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, data: Data, task: Task, batch_size: int) -> dict[str, float]:
    """Returns the task metric and task loss averaged over the whole split."""
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
