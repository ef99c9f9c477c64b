"""What every learned-loss method shares: building the loss network from config, watching its
shape during training (PNG plots, W&B images), and saving phi."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, List

import torch
from torch import nn

from adalfl.config import ConfigError, choice
from adalfl.core import JobContext, Moment
from adalfl.losses import Task
from adalfl.losses.learned import Activation, Init, OutputWiseLoss, PointwiseNetwork, Reduction
from adalfl.methods.base import FixedLossMethod
from adalfl.track.plots import learned_loss as plot_learned_loss
from adalfl.utils import atomic_write_json


class RegressionInput(str, Enum):
    """What a regression task feeds the loss network (``method.loss.regression_input``)."""

    residual = "residual"  # prediction - target (one input)
    pair = "pair"  # (prediction, target)


@dataclass(kw_only=True)
class LossNetConfig:
    """``method.loss``: a learned loss M_phi built from an output-wise network l_phi: R^2 -> R.

    The schema of the YAML node and the object the methods receive (``OmegaConf.to_object``); its
    defaults are AdaLFL's and are written only here: conf/method/adalfl.yaml repeats them with
    their sources (tests/test_config.py holds the two equal), ML3 has its own (``ML3Config``). The
    paper fixes two hidden layers of 40 units and the smooth leaky ReLU; the other values are not
    stated there (their sources: docs/protocol.md and docs/loss_study.md). Values are checked in
    ``__post_init__``; a choice outside its enumeration is refused when the config is composed."""

    hidden: List[int] = field(default_factory=lambda: [40, 40])
    activation: Activation = Activation.smooth_leaky_relu
    output_activation: Activation = Activation.none
    beta: float = 10.0
    gamma: float = 0.01
    init: Init = Init.kaiming_normal
    bias: bool = False
    reduction: Reduction = Reduction.mean  # over outputs: mean (paper) | sum (author's EvoMAL code)
    task_loss_term: bool = False  # M = L_T + l_phi (the author's later loss networks)
    regression_input: RegressionInput = RegressionInput.residual  # regression only

    KEY: ClassVar[str] = "method.loss"

    def __post_init__(self) -> None:
        """Refuse unusable values at start-up, naming the key and the allowed values (the network
        itself is built only after the data is loaded)."""
        key = self.KEY
        self.activation = choice(Activation, self.activation, f"{key}.activation")
        self.output_activation = choice(Activation, self.output_activation, f"{key}.output_activation")
        self.init = choice(Init, self.init, f"{key}.init")
        self.reduction = choice(Reduction, self.reduction, f"{key}.reduction")
        self.regression_input = choice(RegressionInput, self.regression_input, f"{key}.regression_input")
        self.hidden = list(self.hidden)
        if not self.hidden or any(int(w) <= 0 for w in self.hidden):
            raise ConfigError(
                f"{key}.hidden must list at least one positive layer width, e.g. [40, 40]; got {self.hidden}"
            )
        if not self.beta > 0 or not 0 <= self.gamma < 1:
            raise ConfigError(
                f"{key}.beta must be > 0 and {key}.gamma in [0, 1), got beta={self.beta}, gamma={self.gamma}"
            )

    def build(self, task: Task, device: torch.device) -> OutputWiseLoss:
        residual = not task.classification and self.regression_input is RegressionInput.residual
        pointwise = PointwiseNetwork(
            hidden=self.hidden,
            activation=self.activation,
            output_activation=self.output_activation,
            beta=self.beta,
            gamma=self.gamma,
            init=self.init,
            bias=self.bias,
            inputs=1 if residual else 2,
        )
        return OutputWiseLoss(
            task, pointwise, reduction=self.reduction, task_loss_term=self.task_loss_term, residual=residual
        ).to(device)


def loss_curves(loss: OutputWiseLoss, task: Task, step: int) -> dict:
    """The learned loss's shape at one moment, as plain lists (stored in checkpoints)."""
    device = next(loss.parameters()).device
    if task.classification:
        x = torch.linspace(0, 1, 101, device=device)
        return {
            "step": step,
            "x": x.tolist(),
            "target_1": loss.curve(x, 1.0).tolist(),
            "target_0": loss.curve(x, 0.0).tolist(),
        }
    x = torch.linspace(-3, 3, 121, device=device)
    return {"step": step, "x": x.tolist(), "target_0": loss.curve(x, 0.0).tolist()}


REGRESSION_TARGETS = (-2.0, 0.0, 2.0)  # target values whose residual curves loss_health checks
FLAT_SLOPE = 1e-3  # |dl/dprediction| below this fraction of the loss's scale counts as flat


@torch.no_grad()
def loss_health(loss: OutputWiseLoss, task: Task) -> dict[str, float]:
    """How usable the learned loss's shape is, on the same grids as its plots.

    - ``flat_t<k>``: fraction of predictions (probabilities in [0, 1]; residuals in [-3, 3] for
      regression) where l(prediction, target=k) has a slope below ``FLAT_SLOPE`` x scale: a flat
      loss gives the model no gradient there.
    - ``scale``: the spread (max - min) of l over the grids; a loss grown to thousands acts as a
      huge learning rate, one shrunk to ~0 as none.
    - ``free_wrong``: fraction of confident wrong predictions (a wrong class's probability >= 0.5,
      or a residual of magnitude >= 1 around the targets -2, 0 and 2) that cost no more than the right
      prediction (probability 0 for a wrong class, residual 0). Above 0, training is never pushed
      away from those mistakes.
    - ``free_miss`` (classification): the same for the true class predicted at probability <= 0.5
      against probability 1.
    """
    device = next(iter(loss.parameters()), torch.zeros(())).device
    curves: dict[str, torch.Tensor]
    if task.classification:
        x = torch.linspace(0, 1, 101, device=device)
        curves = {"t0": loss.curve(x, 0.0).double(), "t1": loss.curve(x, 1.0).double()}
    else:
        # Residual grid around targets -2, 0 and 2 (standardised targets): a (prediction, target)
        # network can be sound at target 0 and reward over-predicting a large target.
        x = torch.linspace(-3, 3, 121, device=device)
        around = {y: loss.curve(x + y, y).double() for y in REGRESSION_TARGETS}
        curves = {"t0": around[0.0]}
    values = torch.cat(list(curves.values()) if task.classification else list(around.values()))
    scale = float(values.max() - values.min()) if torch.isfinite(values).all() else math.inf
    tolerance = FLAT_SLOPE * max(scale, 1e-12)
    step = float(x[1] - x[0])
    health: dict[str, float] = {"scale": scale}
    for name, curve in curves.items():
        slopes = torch.diff(curve) / step
        health[f"flat_{name}"] = float((slopes.abs() <= tolerance).double().mean())
    if task.classification:
        wrong = curves["t0"]
        health["free_wrong"] = float((wrong[x >= 0.5] <= wrong[0] + tolerance).double().mean())
        right = curves["t1"]
        health["free_miss"] = float((right[x <= 0.5] <= right[-1] + tolerance).double().mean())
    else:
        centre = int((x.abs() < 1e-6).nonzero()[0])
        far = x.abs() >= 1
        free = [(curve[far] <= curve[centre] + tolerance).double().mean() for curve in around.values()]
        health["free_wrong"] = float(torch.stack(free).mean())
    return health


def health_warning(health: dict[str, float]) -> str | None:
    """A one-line reason when the learned loss leaves confident wrong predictions unpunished, else
    None. (``free_miss`` alone is no defect: with softmax outputs, charging the wrong classes already
    pushes the true class up.)"""
    if health.get("free_wrong", 0.0) > 0:
        return (
            f"the learned loss charges nothing for {100 * health['free_wrong']:.0f}% of confident wrong "
            f"predictions (flat fraction {health.get('flat_t0', 0.0):.2f} for a wrong class, scale {health['scale']:.3g})"
        )
    return None


DEAD_SCALE = 1e-12  # a loss whose values over the whole prediction grid span less than this is constant


class DeadLossError(RuntimeError):
    """The learned loss stopped giving the model any gradient: training has stopped, so the job fails."""


@dataclass(kw_only=True)
class DeadLossConfig:
    """``method.dead_loss``: when a learned loss counts as dead. A logged step whose base gradient
    norm is at most ``grad_norm`` gives the model nothing (a healthy run's norms are many orders of
    magnitude above: 0.28 to 1.17 on Digits, against at most 3.9e-12 once dead), and an evaluation
    where ``loss_health``'s scale is ~0 finds the loss constant everywhere. ``patience`` such
    observations in a row fail the job; fewer are counted in result.json (``dead_loss``)."""

    grad_norm: float = 1e-8
    patience: int = 10  # consecutive logged steps; 0: never fail, only count

    def __post_init__(self) -> None:
        key = "method.dead_loss"
        if not self.grad_norm >= 0 or self.patience < 0:
            raise ConfigError(f"{key}.grad_norm and {key}.patience must be >= 0, got {self.grad_norm}, {self.patience}")


class DeadLossMonitor:
    """Counts consecutive dead observations of a learned loss and fails the job after ``patience``."""

    def __init__(self, cfg: DeadLossConfig, hint: str) -> None:
        self.cfg = cfg
        self.hint = hint  # what the user may change, for the error message
        self.run: list[int] = []  # steps of the current run of dead observations
        self.dead_steps = 0  # logged steps without gradient, over the whole job
        self.longest = 0

    def note_gradient(self, step: int, norm: float) -> None:
        if norm > self.cfg.grad_norm:
            self.run = []
            return
        self.dead_steps += 1
        self._dead(step, f"base gradient norm {norm:.3g} <= {self.cfg.grad_norm:g}")

    def note_health(self, step: int, health: dict[str, float], frozen: bool) -> None:
        """An evaluation's ``loss_health``: a constant loss is a dead observation; a frozen loss
        (ML3, TaylorGLO after their search) can never recover from it, so that fails at once."""
        scale = health.get("scale", math.inf)
        if scale > DEAD_SCALE:
            return
        reason = f"the loss is constant over every prediction (loss_health scale {scale:.3g})"
        if frozen and self.cfg.patience > 0:
            raise DeadLossError(f"the learned loss is dead at step {step}: {reason}. {self.hint}")
        self._dead(step, reason)

    def _dead(self, step: int, reason: str) -> None:
        self.run.append(step)
        self.longest = max(self.longest, len(self.run))
        if 0 < self.cfg.patience <= len(self.run):
            raise DeadLossError(
                f"the learned loss is dead: {reason}, and no gradient for {len(self.run)} logged steps in a row "
                f"(steps {self.run[0]}-{self.run[-1]}); the model has stopped training. {self.hint}; "
                f"method.dead_loss.patience=0 only counts such steps"
            )

    def summary(self) -> dict:
        return {"dead_loss": {"dead_logged_steps": self.dead_steps, "longest_run": self.longest}}

    def state_dict(self) -> dict:
        return {"run": list(self.run), "dead_steps": self.dead_steps, "longest": self.longest}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.run, self.dead_steps, self.longest = (
                list(state["run"]),
                int(state["dead_steps"]),
                int(state["longest"]),
            )


class LossWatcher:
    """Snapshots l_phi at the start of training, every ``plot_every`` steps and at the end; writes
    ``learned_loss/step_*.png``, ``learned_loss_evolution.png``, ``learned_loss_curves.json`` and
    ``learned_loss.pt`` (phi)."""

    def __init__(self, plot_every: int) -> None:
        self.plot_every = int(plot_every)
        self.snapshots: list[dict] = []
        self.health: dict[str, float] = {}

    def observe(self, job: JobContext, loss: OutputWiseLoss, step: int, moment: Moment) -> None:
        self.check_health(job, loss, step, moment)
        last = self.snapshots[-1]["step"] if self.snapshots else 0
        # Plots happen at evaluations: take the first one at or past each multiple of plot_every.
        due = moment in ("start", "end") or (self.plot_every > 0 and step // self.plot_every > last // self.plot_every)
        if not due or any(s["step"] == step for s in self.snapshots):
            return
        snap = loss_curves(loss, job.task, step)
        self.snapshots.append(snap)
        folder = job.out_dir / "learned_loss"
        folder.mkdir(exist_ok=True)
        path = plot_learned_loss(
            [snap], job.task.classification, folder / f"step_{step:07d}.png", f"{job.title}, step {step}"
        )
        job.tracker.image("plots/learned_loss", path, "train", step)
        if moment == "start":
            torch.save(loss.state_dict(), job.out_dir / "learned_loss_start.pt")
        if moment == "end":
            torch.save(loss.state_dict(), job.out_dir / "learned_loss.pt")
            curves = {"classification": job.task.classification, "snapshots": self.snapshots}
            atomic_write_json(job.out_dir / "learned_loss_curves.json", curves)  # for sweep figures
            evolution = plot_learned_loss(
                self.snapshots, job.task.classification, job.out_dir / "learned_loss_evolution.png", job.title
            )
            job.tracker.image("plots/learned_loss_evolution", evolution, "train", step)

    def check_health(self, job: JobContext, loss: OutputWiseLoss, step: int, moment: Moment) -> None:
        """Log the loss's health (``loss/*`` in metrics.jsonl and W&B) at every evaluation; warn in the
        job's log at the start and the end when mistakes go unpunished."""
        self.health = loss_health(loss, job.task)
        job.tracker.log("loss", step, {f"loss/{key}": value for key, value in self.health.items()})
        warning = health_warning(self.health)
        if warning and moment in ("start", "end"):
            job.log.warning("[%s] step %d: %s", job.title, step, warning)

    def summary(self) -> dict:
        """The final health, for result.json."""
        return {"loss_health": dict(self.health)} if self.health else {}

    def state_dict(self) -> dict:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.snapshots = list(state["snapshots"])


def build_loss(task: Task, pointwise: nn.Module, device: torch.device) -> OutputWiseLoss:
    """The plain output-wise loss of a pointwise function on (prediction, target) pairs (TaylorGLO's):
    the paper's mean over outputs, without the task loss added."""
    return OutputWiseLoss(task, pointwise, reduction=Reduction.mean, task_loss_term=False, residual=False).to(device)


def plot_offline_phase(job: JobContext, loss: OutputWiseLoss, before: dict, after: dict, name: str) -> None:
    """The loss before and after an offline search (``step`` = offline steps or generations), as
    ``learned_loss_offline.png`` and a W&B image: the one picture of what an offline method learned."""
    path = plot_learned_loss(
        [before, after], job.task.classification, job.out_dir / "learned_loss_offline.png", f"{job.title}: {name}"
    )
    job.tracker.image("plots/learned_loss_offline", path, "offline", int(after["step"]))
    torch.save(loss.state_dict(), job.out_dir / "learned_loss_offline.pt")


class OfflineLearnedLoss(FixedLossMethod):
    """A loss learned in the offline phase, then frozen: the base model (the job's fresh theta_0) is
    trained with it by plain ``torch.optim.SGD`` for the whole budget (ML3, TaylorGLO-style).

    Subclasses build ``self.loss`` in ``build_loss`` and learn it in ``search``. The loss is frozen
    (``requires_grad=False``) once learned, so base steps never accumulate gradients into it.
    """

    def __init__(self, name: str, plot_every: int, dead_loss: DeadLossConfig, hint: str) -> None:
        super().__init__(name)
        self.watcher = LossWatcher(plot_every)
        self.loss: OutputWiseLoss | None = None
        self.searched = False  # the offline search is over and the loss frozen
        self.before: dict | None = None  # the loss's shape before the search (kept for a resumed search's plot)
        self.monitor = DeadLossMonitor(dead_loss, hint)

    def build_loss(self, job: JobContext) -> OutputWiseLoss:
        raise NotImplementedError

    def search(self, job: JobContext, loss: OutputWiseLoss) -> tuple[str, int]:
        """Learn the loss in place, going on from ``load_search_state_dict``'s state if the job
        resumed in the middle. Returns a short description for the offline plot's title and the
        length of the search (offline steps or generations) to label the learned curve."""
        raise NotImplementedError

    def search_state_dict(self) -> dict:
        """The search's progress, for a checkpoint written in the middle of it."""
        return {}

    def load_search_state_dict(self, state: dict | None) -> None:
        del state

    def setup(self, job: JobContext, model: nn.Module) -> None:
        self.loss = self.build_loss(job)

    def offline(self, job: JobContext, model: nn.Module) -> None:
        assert self.loss is not None
        if self.before is None:
            self.before = loss_curves(self.loss, job.task, 0)
        description, length = self.search(job, self.loss)
        after = loss_curves(self.loss, job.task, length)
        plot_offline_phase(job, self.loss, self.before, after, description)
        self.freeze()
        self.searched = True

    def summary(self) -> dict:
        return {**self.watcher.summary(), **self.monitor.summary()}

    def check(self, job: JobContext, step: int, record: dict) -> None:
        if "train/base_grad_norm" in record:
            self.monitor.note_gradient(step, record["train/base_grad_norm"])

    def freeze(self) -> None:
        assert self.loss is not None
        self.loss.requires_grad_(False)

    def base_loss(self, job: JobContext, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert self.loss is not None
        return self.loss(output, target)

    def observe(self, job: JobContext, model: nn.Module, step: int, moment: Moment) -> None:
        assert self.loss is not None
        self.watcher.observe(job, self.loss, step, moment)
        self.monitor.note_health(step, self.watcher.health, frozen=True)

    def state_dict(self) -> dict:
        assert self.loss is not None
        return {
            "loss": self.loss.state_dict(),
            "watcher": self.watcher.state_dict(),
            "searched": self.searched,
            "before": self.before,
            "search": self.search_state_dict(),
            "dead_loss": self.monitor.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        assert self.loss is not None
        self.loss.load_state_dict(state["loss"])
        self.watcher.load_state_dict(state["watcher"])
        self.before = state.get("before")
        self.load_search_state_dict(state.get("search"))
        self.monitor.load_state_dict(state.get("dead_loss"))
        # Checkpoints without the flag were only ever written after the search.
        self.searched = bool(state.get("searched", True))
        if self.searched:
            self.freeze()
