"""One job, start to finish: validate, build, train, evaluate, and leave results behind whatever
happens. ``main.py`` calls ``run`` with the composed Hydra config."""

from __future__ import annotations

import json
import logging
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from adalfl.config import ConfigError, model_name, validate
from adalfl.cpu_memory import configure_cpu_memory
from adalfl.data import BatchSampler, DataNotFoundError, load_data
from adalfl.losses import Task
from adalfl.methods.base import Method
from adalfl.sweep.threads import configure_threads
from adalfl.track.metrics import Tracker
from adalfl.track.plots import learning_curves
from adalfl.track.wandb_logger import WandbLogger
from adalfl.train.job import Job
from adalfl.train.loop import fit
from adalfl.train.preemption import deferred_stop_signals
from adalfl.utils import PhaseTimer, atomic_write_json, git_commit, resolve_device, seed_everything, versions

log = logging.getLogger("adalfl")

RESULT_FILE = "result.json"
# Problems the user fixes with a different command, reported in one line by main.py.
USER_ERRORS = (ConfigError, DataNotFoundError)


def output_dir() -> Path:
    """The Hydra job folder (or the working directory when called outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def read_result(out_dir: Path) -> dict | None:
    path = out_dir / RESULT_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run(cfg: DictConfig, out_dir: Path | None = None) -> float:
    """Run one job; returns its final test metric (for sweepers). Raises after recording a failure."""
    out_dir = out_dir or output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_result(out_dir)
    if previous is not None and previous.get("status") == "done":
        log.info("%s already holds a finished result; skipping (delete it to rerun)", out_dir / RESULT_FILE)
        return float(previous["test_metric"])

    started = time.perf_counter()
    timer = PhaseTimer()
    task = Task(str(cfg.dataset.task), int(cfg.dataset.num_outputs))
    record: dict[str, Any] = {
        "status": "running",
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "model": model_name(cfg),
        "seed": int(cfg.seed),
        "experiment": cfg.get("experiment"),
        "metric_name": task.metric_name,
        "versions": versions(),
        "git_commit": git_commit(),
    }
    wandb: WandbLogger | None = None
    tracker: Tracker | None = None
    try:
        validate(cfg)
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
        launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None
        record["threads"] = configure_threads(cfg.threads, launcher)
        record["cpu_memory_reuse"] = configure_cpu_memory(cfg.cpu_memory)
        device = resolve_device(cfg.device)
        record["device"] = str(device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        tracker = Tracker(out_dir)
        job, model = build_job(cfg, out_dir, device, tracker, timer)  # missing data fails here, before W&B
        wandb = tracker.wandb = WandbLogger(cfg, out_dir)
        method = build_method(cfg)
        with deferred_stop_signals():  # Slurm's time-limit/preemption warning: checkpoint, then stop
            progress = fit(job, model, method)
        curves = learning_curves(tracker, task.metric_name, out_dir / "learning_curves.png", job.title)
        tracker.image("plots/learning_curves", curves, "train", progress.step)
        record.update(
            status="done",
            test_metric=progress.final_test,
            final_val_metric=progress.final_val,
            best_val_metric=progress.best_val,
            best_val_step=progress.best_step,
            test_metric_at_best_val=progress.test_at_best_val,
            steps=progress.step,
            **method.summary(),
        )
    except BaseException as err:
        # SystemExit/KeyboardInterrupt: stopped from outside (Ctrl-C, or submitit exiting after a
        # preemption/time-limit requeue); the next start in this folder resumes from the checkpoint.
        stopped = isinstance(err, (SystemExit, KeyboardInterrupt))
        record.update(
            status="interrupted" if stopped else "failed",
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(),
        )
        raise
    finally:
        record["wall_time_s"] = {**timer.totals, "total": time.perf_counter() - started}
        atomic_write_json(out_dir / RESULT_FILE, record)
        if tracker is not None:
            tracker.close()
        if wandb is not None:
            wandb.result(record)
            wandb.finish(failed=record["status"] != "done")
    log.info(
        "[%s/%s/%s seed=%s] test %s = %.4f  (best val %.4f)  in %.1f s -> %s",
        record["dataset"], record["model"], record["method"], record["seed"], task.metric_name,
        record["test_metric"], record["best_val_metric"], record["wall_time_s"]["total"], out_dir,
    )
    return float(record["test_metric"])


def build_job(
    cfg: DictConfig, out_dir: Path, device: torch.device, tracker: Tracker, timer: PhaseTimer | None = None
) -> tuple[Job, nn.Module]:
    """Seed, load the data and build the job's model (theta_0) and shared services."""
    seed_everything(int(cfg.seed))
    data = load_data(cfg.dataset, device)
    data.channels_last = _channels_last(cfg)
    build_model = partial(_build_model, cfg, device)
    model = build_model()  # built before any offline phase: every method starts from the same theta_0
    job = Job(
        cfg=cfg,
        out_dir=out_dir,
        device=device,
        task=Task(str(cfg.dataset.task), int(cfg.dataset.num_outputs)),
        data=data,
        tracker=tracker,
        build_model=build_model,
        build_optimizer=partial(_build_optimizer, cfg),
        train_batches=BatchSampler(data.train, int(cfg.dataset.batch_size), seed=int(cfg.seed)),
        val_batches=BatchSampler(data.val, int(cfg.dataset.batch_size), seed=int(cfg.seed) + 1_000_003),
        timer=timer or PhaseTimer(),
        log=log,
    )
    return job, model


def build_method(cfg: DictConfig) -> Method:
    """Instantiate the method, reporting a bad method value as a ConfigError, not a Hydra trace."""
    try:
        return instantiate(cfg.method, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from err
        raise


def _build_model(cfg: DictConfig, device: torch.device) -> nn.Module:
    try:
        model = instantiate(cfg.model, _convert_="all")
    except Exception as err:
        raise ConfigError(f"cannot build model {cfg.model._target_}: {err}") from err
    return model.to(device, memory_format=torch.channels_last if _channels_last(cfg) else torch.preserve_format)


def _channels_last(cfg: DictConfig) -> bool:
    return bool(cfg.channels_last) and len(cfg.dataset.input_shape) == 3  # images only


def _build_optimizer(
    cfg: DictConfig, params: list[nn.Parameter]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    node = OmegaConf.to_container(cfg.optimizer, resolve=True)
    schedule = node.pop("schedule")
    optimizer = instantiate(node)(params)
    return optimizer, instantiate(schedule)(optimizer)
