"""AdaLFL: a loss network initialised offline (Algorithm 1) and adapted online, one meta step
after every base step, for the whole run (Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from adalfl.config import ConfigError, MethodConfig
from adalfl.core import JobContext, Method, Moment, Stats
from adalfl.losses.learned import OutputWiseLoss
from adalfl.meta import make_engine
from adalfl.methods.learned_loss import DeadLossConfig, DeadLossMonitor, LossNetConfig, LossWatcher
from adalfl.methods.metalearning import OfflineMetaTraining, OnlineMetaConfig, OnlineMetaStep


@dataclass(kw_only=True)
class AdaLFLConfig(MethodConfig):
    """``method`` of conf/method/adalfl.yaml: its schema and what ``AdaLFL`` receives."""

    _target_: str = "adalfl.methods.adalfl.AdaLFL"
    name: str = "adalfl"
    loss: LossNetConfig = field(default_factory=LossNetConfig)
    meta: OnlineMetaConfig  # no default: init_steps comes from the offline node (the YAML's ${offline.steps})
    plot_every: int = 0  # base steps between learned-loss plots (0: a quarter of dataset.steps); also start and end
    dead_loss: DeadLossConfig = field(default_factory=DeadLossConfig)

    def __post_init__(self) -> None:
        if self.plot_every < 0:
            raise ConfigError(f"method.plot_every must be >= 0, got {self.plot_every}")


CONFIG_SCHEMA = AdaLFLConfig


class AdaLFL(Method):
    def __init__(self, config: AdaLFLConfig) -> None:
        super().__init__(config.name)
        self.config = config
        self.loss_cfg = config.loss
        self.meta_cfg = config.meta
        self.engine = make_engine(self.meta_cfg.backend)
        self.watcher = LossWatcher(config.plot_every)
        self.loss: OutputWiseLoss | None = None
        self.online: OnlineMetaStep | None = None
        self.offline_run = OfflineMetaTraining()  # Algorithm 1's progress, checkpointed with the method
        self.monitor = DeadLossMonitor(
            config.dead_loss, f"Lower method.meta.online_lr ({self.meta_cfg.online_lr:g}) or optimizer.lr"
        )

    def setup(self, job: JobContext, model: nn.Module) -> None:
        self.loss = self.loss_cfg.build(job.task, job.device)
        if self.watcher.plot_every == 0:  # the loss changes all through training: watch it four times
            self.watcher.plot_every = max(1, job.steps // 4)
        self.online = OnlineMetaStep(self.engine, list(self.loss.parameters()), self.meta_cfg.online_lr)

    def offline(self, job: JobContext, model: nn.Module) -> None:
        assert self.loss is not None
        self.offline_run.run(
            job, self.engine, list(self.loss.parameters()), self.loss, self.meta_cfg.init_steps, self.meta_cfg.init_lr
        )

    def train_step(self, job: JobContext, model: nn.Module, optimizer: torch.optim.Optimizer) -> Stats:
        assert self.online is not None and self.loss is not None
        return self.online(job, model, optimizer, self.loss)

    def observe(self, job: JobContext, model: nn.Module, step: int, moment: Moment) -> None:
        assert self.loss is not None
        self.watcher.observe(job, self.loss, step, moment)
        self.monitor.note_health(step, self.watcher.health, frozen=False)  # the meta step may still revive it

    def check(self, job: JobContext, step: int, record: dict) -> None:
        if "train/base_grad_norm" in record:
            self.monitor.note_gradient(step, record["train/base_grad_norm"])

    def summary(self) -> dict:
        return {**self.watcher.summary(), **self.monitor.summary()}

    def state_dict(self) -> dict:
        assert self.loss is not None and self.online is not None
        return {
            "loss": self.loss.state_dict(),
            "online": self.online.state_dict(),
            "watcher": self.watcher.state_dict(),
            "offline": self.offline_run.state_dict(),
            "dead_loss": self.monitor.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        assert self.loss is not None and self.online is not None
        self.loss.load_state_dict(state["loss"])
        self.online.load_state_dict(state["online"])
        self.watcher.load_state_dict(state["watcher"])
        self.offline_run.load_state_dict(state.get("offline"))
        self.monitor.load_state_dict(state.get("dead_loss"))
