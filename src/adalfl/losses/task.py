"""What a task means: its handcrafted loss L_T, its metric, and the (prediction, target) pair that
output-wise learned losses see."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Task:
    kind: str  # "classification" or "regression"
    num_outputs: int

    @property
    def classification(self) -> bool:
        return self.kind == "classification"

    @property
    def metric_name(self) -> str:
        return "error_rate" if self.classification else "mse"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_T: cross-entropy on logits, or squared error averaged over batch and outputs."""
        if self.classification:
            return F.cross_entropy(output, target)
        return F.mse_loss(output, target)

    def metric_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of the per-example metric (misclassified, or squared error averaged
        over outputs), so that batched evaluation can divide by the total count."""
        if self.classification:
            return (output.argmax(dim=1) != target).sum().to(torch.float64)
        return (output - target).pow(2).mean(dim=1).sum().to(torch.float64)

    def loss_inputs(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target) of equal shape (B, C) for output-wise learned losses:
        softmax probabilities and one-hot labels for classification, raw values for regression."""
        if self.classification:
            probs = F.softmax(output, dim=1)
            onehot = F.one_hot(target, num_classes=output.shape[1]).to(probs.dtype)
            return probs, onehot
        return output, target
