"""The two meta-learning procedures the methods share.

* ``offline_meta_training``: Algorithms 1 and 3. Each step draws a fresh base model, takes one
  differentiable base step on a training batch, scores the result on a validation batch with the
  task loss, and updates the meta parameters with Adam.
* ``OnlineMetaStep``: Algorithms 2 and 4. One look-ahead base step on a training batch, the task
  loss at theta_{t+1} on a validation batch, an Adam step on the meta parameters, and theta_{t+1}
  written back as the base update (the base step is never computed twice).

The meta parameters are whatever ``loss_fn`` / ``lr_fn`` close over: the loss network's phi
(AdaLFL, ML3, TaylorGLO by gradient) or a log learning rate (meta-learned learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from adalfl.config import ConfigError, choice
from adalfl.core import JobContext, Stats
from adalfl.meta.engine import Backend, LossFn, MetaEngine, MetaStep
from adalfl.models import reset_parameters
from adalfl.track.progress import ProgressLog

LrFn = Callable[[], torch.Tensor]


@dataclass(kw_only=True)
class OfflineMetaConfig:
    """``method.meta`` of an offline method (Algorithm 1 or 3): ML3, TaylorGLO's gradient search.

    ``init_steps`` has no default here: its default is the root ``offline`` node's
    (``adalfl.config.OfflineConfig``), which conf/method/*.yaml interpolate (``${offline.steps}``)."""

    backend: Backend = Backend.func  # func (torch.func, default) | higher
    init_steps: int  # S_init: conf/method/*.yaml set ${offline.steps} (ML3: ${offline.ml3_steps})
    init_lr: float = 1e-3  # Adam, offline (paper)

    def __post_init__(self) -> None:
        self.backend = choice(Backend, self.backend, "method.meta.backend")
        if self.init_steps < 0:
            raise ConfigError(f"method.meta.init_steps must be >= 0, got {self.init_steps}")
        if self.init_lr < 0:
            raise ConfigError(f"method.meta.init_lr must be >= 0, got {self.init_lr}")


@dataclass(kw_only=True)
class OnlineMetaConfig(OfflineMetaConfig):
    """``method.meta`` of a method with an online phase too (Algorithms 2 and 4): AdaLFL, metalr."""

    online_lr: float = 1e-5  # Adam, online (paper's eta)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.online_lr < 0:
            raise ConfigError(f"method.meta.online_lr must be >= 0, got {self.online_lr}")


def total_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach()) for t in tensors]))


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    return bool(torch.isfinite(torch.cat([t.detach().reshape(-1) for t in tensors])).all())


def meta_step(
    engine: MetaEngine,
    job: JobContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    meta_params: Sequence[torch.Tensor],
    lr_fn: Optional[LrFn] = None,
) -> MetaStep:
    """One look-ahead base step on a training batch, scored on a validation batch."""
    lr = lr_fn() if lr_fn is not None else None
    return engine.step(
        model,
        optimizer,
        loss_fn,
        meta_params,
        job.train_batch(),
        job.val_batch(),
        job.task.loss,
        lr=lr,
        loss_has_meta_params=lr_fn is None,
    )


def meta_adam(meta_params: Sequence[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam for the meta parameters. Fused: one kernel for all of them, where the per-tensor loop
    cost a third of a millisecond per step for the loss network's six small tensors."""
    return torch.optim.Adam(meta_params, lr=lr, fused=True)


def apply_meta_gradient(
    meta_optimizer: torch.optim.Optimizer, meta_params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> bool:
    """Adam step on the meta parameters; a non-finite meta-gradient skips it (returns False)."""
    if not all_finite(grads):
        return False
    for param, grad in zip(meta_params, grads):
        param.grad = grad
    meta_optimizer.step()
    return True


class OfflineMetaTraining:
    """Algorithm 1 (loss) / 3 (learning rate) as a resumable loop.

    Its position (the meta step reached), Adam's state and the count of skipped steps belong to
    the method's checkpoint (``state_dict``); the loop writes that checkpoint every
    ``checkpoint.every`` meta steps and at once on a stop signal (``JobContext.offline_boundary``).
    With the RNG streams and batch samplers the checkpoint also restores, a preempted phase ends
    exactly as an uninterrupted one.
    """

    def __init__(self) -> None:
        self.step = 0  # meta steps done
        self.skipped = 0  # of those, skipped for a non-finite meta-gradient
        self.meta_optimizer: torch.optim.Optimizer | None = None
        self._restored_optimizer: dict | None = None

    def run(
        self,
        job: JobContext,
        engine: MetaEngine,
        meta_params: Sequence[torch.Tensor],
        loss_fn: LossFn,
        steps: int,
        adam_lr: float,
        lr_fn: Optional[LrFn] = None,
        extra_scalars: Optional[Callable[[], dict[str, torch.Tensor]]] = None,
    ) -> int:
        """Run (or go on with) the phase up to ``steps`` meta steps. Returns the number of skipped steps."""
        if steps <= 0:
            return 0
        self.meta_optimizer = meta_adam(meta_params, adam_lr)
        if self._restored_optimizer is not None:
            self.meta_optimizer.load_state_dict(self._restored_optimizer)
            self._restored_optimizer = None
        if self.step == 0:
            scratch = job.build_model()  # the job's own theta_0 stays untouched by the offline phase
        else:
            # Resumed: the restored RNG streams already stand after this draw; re-initialised every step anyway.
            with torch.random.fork_rng(devices=[]):
                scratch = job.build_model()
        scratch.train()
        log_every = job.log_interval
        every = job.checkpoint_every
        progress = ProgressLog(job.log, job.title, "offline meta step", steps, start=self.step)
        for step in range(self.step + 1, steps + 1):
            reset_parameters(scratch)
            optimizer, _ = job.build_optimizer(list(scratch.parameters()))  # fresh state: no momentum yet
            result = meta_step(engine, job, scratch, optimizer, loss_fn, meta_params, lr_fn)
            if not apply_meta_gradient(self.meta_optimizer, meta_params, result.meta_grads):
                self.skipped += 1
            self.step = step
            if step % log_every == 0 or step == steps:
                scalars = {
                    "offline/meta_loss": result.meta_loss,
                    "offline/base_loss": result.base_loss,
                    "offline/meta_grad_norm": total_norm(result.meta_grads),
                    "offline/skipped_meta_steps": self.skipped,
                }
                if extra_scalars is not None:
                    scalars.update(extra_scalars())
                job.tracker.log("offline", step, scalars)
            progress.update(step, meta_objective=result.meta_loss)
            # The loop checkpoints right after the phase, so the last step needs none of its own.
            job.offline_boundary(due=every > 0 and step % every == 0 and step < steps)
        if self.skipped:
            job.log.warning(
                "offline phase: %d of %d meta steps skipped (non-finite meta-gradient)", self.skipped, steps
            )
        return self.skipped

    def state_dict(self) -> dict:
        optimizer = self.meta_optimizer.state_dict() if self.meta_optimizer is not None else self._restored_optimizer
        return {"step": self.step, "skipped": self.skipped, "meta_optimizer": optimizer}

    def load_state_dict(self, state: dict | None) -> None:
        """``None``: a checkpoint written before offline phases were resumable (always after them)."""
        if state is None:
            return
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self._restored_optimizer = state["meta_optimizer"]


def offline_meta_training(
    job: JobContext,
    engine: MetaEngine,
    meta_params: Sequence[torch.Tensor],
    loss_fn: LossFn,
    steps: int,
    adam_lr: float,
    lr_fn: Optional[LrFn] = None,
    extra_scalars: Optional[Callable[[], dict[str, torch.Tensor]]] = None,
) -> int:
    """Algorithm 1 / 3 from the start, in one go (no resumable state kept). Returns the skipped steps."""
    return OfflineMetaTraining().run(job, engine, meta_params, loss_fn, steps, adam_lr, lr_fn, extra_scalars)


class OnlineMetaStep:
    """Algorithm 2 / 4: the base step and the meta step of one training iteration."""

    def __init__(self, engine: MetaEngine, meta_params: Sequence[torch.Tensor], adam_lr: float) -> None:
        self.engine = engine
        self.meta_params = list(meta_params)
        self.meta_optimizer = meta_adam(self.meta_params, adam_lr)
        self.skipped = 0

    def __call__(
        self,
        job: JobContext,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        lr_fn: Optional[LrFn] = None,
    ) -> Stats:
        result = meta_step(self.engine, job, model, optimizer, loss_fn, self.meta_params, lr_fn)
        if not apply_meta_gradient(self.meta_optimizer, self.meta_params, result.meta_grads):
            self.skipped += 1  # this meta step is dropped; the base step below still happens
        self.engine.commit(model, optimizer, result)
        return {
            "train/base_loss": result.base_loss,
            "train/task_loss": lambda: job.task.loss(result.output, result.target),  # on logged steps only
            "train/base_grad_norm": lambda: total_norm(result.base_grads),
            "meta/val_task_loss": result.meta_loss,
            "meta/grad_norm": lambda: total_norm(result.meta_grads),
            "meta/skipped_steps": torch.tensor(float(self.skipped)),
        }

    def state_dict(self) -> dict:
        return {"meta_optimizer": self.meta_optimizer.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.skipped = int(state["skipped"])
