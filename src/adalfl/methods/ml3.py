"""ML3 (Bechtle et al., 2021) as the AdaLFL paper uses it as a baseline: a loss network learned
offline by unrolled meta-gradients (Algorithm 1), then frozen, and a fresh model trained with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from adalfl.config import ConfigError, MethodConfig
from adalfl.core import JobContext
from adalfl.losses.learned import Activation, Init, OutputWiseLoss, Reduction
from adalfl.meta import make_engine
from adalfl.methods.learned_loss import DeadLossConfig, LossNetConfig, OfflineLearnedLoss
from adalfl.methods.metalearning import OfflineMetaConfig, OfflineMetaTraining


def _ml3_network() -> LossNetConfig:
    # ML3's network as the paper's first author ran it: 2-50-50-1 without biases, ReLU hidden layers,
    # Softplus output, Kaiming-normal weights, summed over outputs (conf/method/ml3.yaml, with sources).
    return LossNetConfig(
        hidden=[50, 50],
        activation=Activation.relu,
        output_activation=Activation.softplus,
        init=Init.kaiming_normal,
        bias=False,
        reduction=Reduction.sum,
    )


@dataclass(kw_only=True)
class ML3Config(MethodConfig):
    """``method`` of conf/method/ml3.yaml: its schema and what ``ML3`` receives."""

    _target_: str = "adalfl.methods.ml3.ML3"
    name: str = "ml3"
    loss: LossNetConfig = field(default_factory=_ml3_network)
    meta: OfflineMetaConfig  # no default: init_steps comes from the offline node (the YAML's ${offline.ml3_steps})
    plot_every: int = 0  # base steps between learned-loss plots (0: start and end; the loss is frozen)
    dead_loss: DeadLossConfig = field(default_factory=DeadLossConfig)

    def __post_init__(self) -> None:
        if self.plot_every < 0:
            raise ConfigError(f"method.plot_every must be >= 0, got {self.plot_every}")


CONFIG_SCHEMA = ML3Config


class ML3(OfflineLearnedLoss):
    def __init__(self, config: ML3Config) -> None:
        super().__init__(
            config.name,
            config.plot_every,
            config.dead_loss,
            "The offline phase learned a loss that cannot train: try a lower method.meta.init_lr or optimizer.lr",
        )
        self.config = config
        self.loss_cfg = config.loss
        self.meta_cfg = config.meta
        self.engine = make_engine(self.meta_cfg.backend)
        self.offline_run = OfflineMetaTraining()

    def build_loss(self, job: JobContext) -> OutputWiseLoss:
        return self.loss_cfg.build(job.task, job.device)

    def search(self, job: JobContext, loss: OutputWiseLoss) -> tuple[str, int]:
        steps = self.meta_cfg.init_steps
        self.offline_run.run(job, self.engine, list(loss.parameters()), loss, steps, self.meta_cfg.init_lr)
        return f"ML3 loss before / after {steps} offline meta steps", steps

    def search_state_dict(self) -> dict:
        return self.offline_run.state_dict()

    def load_search_state_dict(self, state: dict | None) -> None:
        self.offline_run.load_state_dict(state)
