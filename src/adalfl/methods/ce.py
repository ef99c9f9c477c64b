"""The handcrafted-loss baseline: cross-entropy for classification, squared error for regression."""

from __future__ import annotations

from dataclasses import dataclass

from adalfl.config import MethodConfig
from adalfl.methods.base import FixedLossMethod


@dataclass(kw_only=True)
class CEConfig(MethodConfig):
    """``method`` of conf/method/ce.yaml: its schema and what ``CrossEntropy`` receives."""

    _target_: str = "adalfl.methods.ce.CrossEntropy"
    name: str = "ce"


CONFIG_SCHEMA = CEConfig


class CrossEntropy(FixedLossMethod):
    """Trains with the task loss L_T itself (see ``Task.loss``)."""

    def __init__(self, config: CEConfig) -> None:
        super().__init__(config.name)
        self.config = config
