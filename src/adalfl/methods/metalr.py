"""Meta-learned base learning rate (AdaLFL paper, Algorithms 3 and 4): the control experiment that
asks whether AdaLFL is "just" an implicit learning-rate schedule. The same offline initialisation
and online adaptation as AdaLFL, with a learned learning rate in place of the learned loss and the
task loss L_T as the base loss.

The learned rate is alpha = exp(log_alpha): positive by construction, and Adam's roughly constant
step size on log_alpha makes every step a relative change of the rate (about +-eta per step, in
log units), whatever the rate's magnitude.

Schedule: the optimizer's schedule multiplies the learned rate. The step size of base step t is
exp(log_alpha) * s_t, with s_t = (scheduled lr at t) / optimizer.lr, so s_t = 1 without milestones
and drops by ``lr_gamma`` at each. The meta-gradient is taken through this product, so the learned
part adapts on top of the schedule rather than having to undo it. In the offline phase
(fresh models, first step) s = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from adalfl.config import ConfigError, MethodConfig
from adalfl.core import JobContext, Method, Moment, Stats
from adalfl.meta import make_engine
from adalfl.methods.metalearning import OfflineMetaTraining, OnlineMetaConfig, OnlineMetaStep
from adalfl.track.plots import meta_learning_rate


@dataclass(kw_only=True)
class MetaLRConfig(MethodConfig):
    """``method`` of conf/method/metalr.yaml: its schema and what ``MetaLR`` receives."""

    _target_: str = "adalfl.methods.metalr.MetaLR"
    name: str = "metalr"
    meta: OnlineMetaConfig  # no default: init_steps comes from the offline node (the YAML's ${offline.steps})
    initial_lr: float | None = None  # alpha before Algorithm 3; None = optimizer.lr

    def __post_init__(self) -> None:
        if self.initial_lr is not None and not self.initial_lr > 0:
            raise ConfigError(f"method.initial_lr must be positive (or null), got {self.initial_lr}")


CONFIG_SCHEMA = MetaLRConfig


class MetaLR(Method):
    def __init__(self, config: MetaLRConfig) -> None:
        super().__init__(config.name)
        self.config = config
        self.meta_cfg = config.meta
        self.initial_lr = config.initial_lr
        self.engine = make_engine(self.meta_cfg.backend)
        self.log_lr: torch.Tensor | None = None
        self.base_lr = 1.0  # optimizer.lr: the schedule's value divided by it is the schedule factor
        self.online: OnlineMetaStep | None = None
        self.offline_run = OfflineMetaTraining()  # Algorithm 3's progress, checkpointed with the method

    @property
    def lr(self) -> torch.Tensor:
        """The learned rate alpha = exp(log_alpha), without the schedule factor."""
        assert self.log_lr is not None
        return self.log_lr.exp()

    def setup(self, job: JobContext, model: nn.Module) -> None:
        self.base_lr = job.base_lr
        start = self.initial_lr if self.initial_lr is not None else self.base_lr
        self.log_lr = torch.tensor(math.log(start), device=job.device, requires_grad=True)
        self.online = OnlineMetaStep(self.engine, [self.log_lr], self.meta_cfg.online_lr)

    def offline(self, job: JobContext, model: nn.Module) -> None:
        assert self.log_lr is not None
        if self.offline_run.step == 0:  # not when resuming the phase: the start is the start
            torch.save({"log_lr": self.log_lr.detach().cpu()}, job.out_dir / "meta_lr_start.pt")
        self.offline_run.run(
            job,
            self.engine,
            [self.log_lr],
            job.task.loss,
            self.meta_cfg.init_steps,
            self.meta_cfg.init_lr,
            lr_fn=lambda: self.lr,
            extra_scalars=lambda: {"offline/meta_lr": self.lr.detach()},
        )
        job.log.info("[%s] meta-learned lr after the offline phase: %.4g", job.title, float(self.lr.detach()))

    def train_step(self, job: JobContext, model: nn.Module, optimizer: torch.optim.Optimizer) -> Stats:
        assert self.online is not None
        factor = float(optimizer.param_groups[0]["lr"]) / self.base_lr
        step_lr = (self.lr * factor).detach()  # the rate this base step uses (before the meta update)
        stats = self.online(job, model, optimizer, job.task.loss, lr_fn=lambda: self.lr * factor)
        stats["train/meta_lr"] = step_lr
        return stats

    def observe(self, job: JobContext, model: nn.Module, step: int, moment: Moment) -> None:
        if moment == "start":
            return
        offline = job.tracker.series("offline", "offline/meta_lr")
        online = job.tracker.series("train", "train/meta_lr")
        path = meta_learning_rate(offline, online, job.out_dir / "meta_lr.png", f"{job.title}: meta-learned lr")
        job.tracker.image("plots/meta_lr", path, "train", step)
        if moment == "end":
            assert self.log_lr is not None
            torch.save({"log_lr": self.log_lr.detach().cpu()}, job.out_dir / "meta_lr.pt")

    def state_dict(self) -> dict:
        assert self.log_lr is not None and self.online is not None
        return {
            "log_lr": self.log_lr.detach().clone(),
            "online": self.online.state_dict(),
            "offline": self.offline_run.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        assert self.log_lr is not None and self.online is not None
        with torch.no_grad():
            self.log_lr.copy_(state["log_lr"])
        self.online.load_state_dict(state["online"])
        self.offline_run.load_state_dict(state.get("offline"))
