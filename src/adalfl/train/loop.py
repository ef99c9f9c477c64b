"""The one training loop. Methods plug in through ``Method``; this file owns step counting,
the schedule, logging, evaluation, checkpoints and resume."""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from adalfl import preemption
from adalfl.core import JobContext, Method, evaluate
from adalfl.track.progress import ProgressLog
from adalfl.train.checkpoint import Checkpointer, rng_state, set_rng_state
from adalfl.train.folder import ConfigMismatch, differences, mismatch_message


class NonFiniteLossError(RuntimeError):
    """The base loss became NaN or infinite: training cannot recover, so the job fails."""


@dataclass
class Progress:
    step: int = 0
    offline_done: bool = False
    best_val: float = math.inf
    best_step: int = -1
    test_at_best_val: float = math.nan
    final_val: float = math.nan
    final_test: float = math.nan


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def fit(job: JobContext, model: nn.Module, method: Method) -> Progress:
    """Run the method's offline phase (once) and the base training budget, resuming from the job
    folder's checkpoint when there is one. Returns the final progress record.

    Checkpoints are written every ``checkpoint.every`` base steps, by the offline phases at their
    own boundaries (``JobContext.offline_boundary``), and on a stop signal; each records the config's
    identity, and one of another config is refused rather than resumed."""
    total = job.steps
    optimizer, scheduler = job.build_optimizer(list(model.parameters()))
    method.setup(job, model)
    checkpointer = Checkpointer(job.out_dir)
    progress = Progress()
    identity = job.identity

    def save() -> None:
        checkpointer.save(
            {
                "progress": asdict(progress),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "method": method.state_dict(),
                "train_batches": job.train_batches.state_dict(),
                "val_batches": job.val_batches.state_dict(),
                "rng": rng_state(),
                "timer": job.timer.state_dict(),
                "metrics_offset": job.tracker.offset(),
                "config_identity": identity,
            }
        )

    state = checkpointer.load() if job.resume else None
    if state is not None:
        diffs = differences(state["config_identity"], identity) if "config_identity" in state else []
        if diffs:  # adalfl.app refuses these first; this guards every other caller
            raise ConfigMismatch(mismatch_message(job.out_dir, "a checkpoint", diffs))
        progress = Progress(**state["progress"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        job.train_batches.load_state_dict(state["train_batches"])
        job.val_batches.load_state_dict(state["val_batches"])
        set_rng_state(state["rng"])
        if "totals" in state["timer"]:
            job.timer.load_state_dict(state["timer"])
        else:  # written before the total was carried: phase times only
            job.timer.totals = dict(state["timer"])
        job.tracker.resume_from(state["metrics_offset"])
        where = f"step {progress.step}/{total}" if progress.offline_done else "the offline phase"
        job.log.info("resuming from %s at %s", checkpointer.loaded_from, where)
    else:
        if job.tracker.path.exists():
            job.log.info("no usable checkpoint in %s: starting from scratch", job.out_dir)
        job.tracker.reset()

    ckpt_every = job.checkpoint_every
    job.save_checkpoint = save if ckpt_every > 0 else None
    if not progress.offline_done:
        with job.timer.phase("offline"):
            method.offline(job, model)  # checkpoints through job.offline_boundary as it goes
        progress.offline_done = True
        if ckpt_every > 0:
            save()  # a crash during training must not redo the offline phase
    if progress.step == 0:
        method.observe(job, model, 0, "start")

    log_every, eval_every = job.log_interval, job.eval_interval
    bar = tqdm(
        total=total,
        initial=progress.step,
        desc=job.title,
        disable=not (job.progress_bar and sys.stderr.isatty()),
        dynamic_ncols=True,
        leave=False,
    )
    ticker = ProgressLog(job.log, job.title, "training step", total, start=progress.step, enabled=bar.disable)
    model.train()
    while progress.step < total:
        with job.timer.phase("train"):
            lr = _current_lr(optimizer)
            stats = method.train_step(job, model, optimizer)
            _step_schedule(scheduler)
        progress.step += 1
        step = progress.step
        bar.update(1)
        ticker.update(step, base_loss=stats.get("train/base_loss"))
        last = step == total
        scalars: dict[str, float | torch.Tensor] = {}
        if step % log_every == 0 or last:
            scalars.update({key: value() if callable(value) else value for key, value in stats.items()})
            scalars["train/lr"] = lr
        if step % eval_every == 0 or last:
            scalars.update(_evaluate(job, model, progress))
        if scalars:
            record = job.tracker.log("train", step, scalars)
            base_loss = record.get("train/base_loss", 0.0)
            task_loss = record.get("train/task_loss", 0.0)
            # A learned loss can stay finite (e.g. a saturated softplus) while the model diverges.
            if not (math.isfinite(base_loss) and math.isfinite(task_loss)):
                raise NonFiniteLossError(
                    f"base loss became {base_loss} (task loss {task_loss}) at step {step}; "
                    "lower optimizer.lr or check the data"
                )
            method.check(job, step, record)  # e.g. a learned loss that gives no gradient any more
            bar.set_postfix(loss=f"{base_loss:.4g}", refresh=False)
        if step % eval_every == 0 or last:
            method.observe(job, model, step, "end" if last else "eval")
        if ckpt_every > 0 and (step % ckpt_every == 0 or last or preemption.requested()):
            save()
        preemption.deliver(
            checkpointed=ckpt_every > 0
        )  # a scheduler's stop signal takes effect here, after the checkpoint
    bar.close()
    checkpointer.previous.unlink(missing_ok=True)
    return progress


def _evaluate(job: JobContext, model: nn.Module, progress: Progress) -> dict[str, float]:
    task, data, size = job.task, job.data, job.eval_batch_size
    metric = task.metric_name
    with job.timer.phase("eval"):
        val = evaluate(model, data.val, data, task, size)
        test = evaluate(model, data.test, data, task, size)
    progress.final_val, progress.final_test = val[metric], test[metric]
    if val[metric] < progress.best_val:
        progress.best_val, progress.best_step, progress.test_at_best_val = val[metric], progress.step, test[metric]
    job.log.info(
        "[%s] step %d/%d  val %s %.4f  test %s %.4f",
        job.title,
        progress.step,
        job.steps,
        metric,
        val[metric],
        metric,
        test[metric],
    )
    return {
        f"val/{metric}": val[metric],
        "val/task_loss": val["task_loss"],
        f"test/{metric}": test[metric],
        "test/task_loss": test["task_loss"],
    }


def _step_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Advance the base learning-rate schedule by one step. Meta-learning methods update the model
    through their engine, never through ``optimizer.step()``, so torch's first ``scheduler.step()``
    would warn that the optimiser has not stepped; the warning is silenced here only, for this call,
    not for the whole process."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()
