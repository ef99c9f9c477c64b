"""Task losses and metrics, and the learned-loss parameterisations."""

from adalfl.losses.task import Task

__all__ = ["Task"]
