"""The learned loss's health measures (collapse detector): they must flag a loss that is flat or that
charges nothing for confident mistakes, and pass a loss that behaves like the task loss."""

from __future__ import annotations

import torch
from torch import nn

from adalfl.losses import Task
from adalfl.losses.learned import OutputWiseLoss
from adalfl.methods.learned_loss import health_warning, loss_health

CLASSIFICATION = Task("classification", 10)
REGRESSION = Task("regression", 1)


class _Pointwise(nn.Module):
    """l(prediction, target) given as a Python function of the two columns."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.dummy = nn.Parameter(torch.zeros(()))  # the health check finds the device through it

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.fn(pairs[..., 0], pairs[..., 1])


def _health(task: Task, fn) -> dict[str, float]:
    return loss_health(
        OutputWiseLoss(task, _Pointwise(fn), reduction="mean", task_loss_term=False, residual=False), task
    )


def test_squared_error_is_healthy() -> None:
    health = _health(CLASSIFICATION, lambda p, y: (p - y) ** 2)
    assert health["free_wrong"] == 0 and health["free_miss"] == 0
    assert health["flat_t0"] <= 0.02 and health["flat_t1"] <= 0.02  # only the minimum's neighbourhood
    assert abs(health["scale"] - 1.0) < 1e-6
    assert health_warning(health) is None


def test_loss_flat_for_confident_wrong_classes_is_flagged() -> None:
    # the collapse seen on Fashion-MNIST: a wrong class costs nothing above p = 0.17
    health = _health(CLASSIFICATION, lambda p, y: torch.where(y > 0.5, (1 - p) * 5, torch.relu(0.17 - p) * 50))
    assert health["free_wrong"] == 1.0
    assert health["flat_t0"] > 0.8
    warning = health_warning(health)
    assert warning is not None and "confident wrong" in warning


def test_loss_that_ignores_a_missed_true_class_is_measured_but_not_a_warning() -> None:
    # charging the wrong classes alone still trains a softmax model: measured, not warned about
    health = _health(CLASSIFICATION, lambda p, y: torch.where(y > 0.5, torch.relu(p - 0.6), p))
    assert health["free_wrong"] == 0 and health["free_miss"] == 1.0
    assert health_warning(health) is None


def test_regression_loss_flat_away_from_zero_is_flagged() -> None:
    good = _health(REGRESSION, lambda p, y: (p - y) ** 2)
    assert good["free_wrong"] == 0 and health_warning(good) is None
    saturated = _health(REGRESSION, lambda p, y: torch.clamp((p - y) ** 2, max=0.5))
    assert saturated["free_wrong"] == 0 and saturated["flat_t0"] > 0.5  # flat, but mistakes still cost
    bad = _health(REGRESSION, lambda p, y: torch.where((p - y).abs() < 0.9, (p - y) ** 2, torch.zeros_like(p)))
    assert bad["free_wrong"] == 1.0 and health_warning(bad) is not None


def test_regression_loss_that_rewards_overshooting_a_large_target_is_flagged() -> None:
    # the shape Algorithm 1 learned on Diabetes with (prediction, target) inputs: sound around
    # target 0, but for a target of 2 a larger prediction always costs less (a runaway direction)
    runaway = _health(REGRESSION, lambda p, y: (p - y).abs() - 2 * y.clamp(min=0) * p)
    assert runaway["free_wrong"] > 0 and health_warning(runaway) is not None
    assert _health(REGRESSION, lambda p, y: (p - y).abs())["free_wrong"] == 0
