"""One job, start to finish: validate, build, train, evaluate, and leave results behind whatever
happens. ``main.py`` calls ``run`` with the composed Hydra config."""

from __future__ import annotations

import importlib
import inspect
import logging
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from adalfl.config import ConfigError, model_name, validate
from adalfl.core import JobContext, Method
from adalfl.cpu_memory import configure_cpu_memory
from adalfl.data import BatchSampler, Data, DataNotFoundError, load_data
from adalfl.losses import Task
from adalfl.preemption import deferred_stop_signals
from adalfl.result import RESULT_FILE, Result, ResultError, Status, WallTime
from adalfl.sweep.threads import configure_threads
from adalfl.track.metrics import Tracker
from adalfl.track.plots import learning_curves
from adalfl.track.wandb_logger import WandbLogger
from adalfl.train.checkpoint import Checkpointer
from adalfl.train.folder import (
    ConfigMismatch,
    FolderInUse,
    config_identity,
    differences,
    fingerprint,
    folder_lock,
    legacy_differences,
    mismatch_message,
    recorded_identity,
    set_aside,
)
from adalfl.train.loop import fit
from adalfl.utils import PhaseTimer, git_commit, resolve_device, seed_everything, versions

log = logging.getLogger("adalfl")

# Problems the user fixes with a different command, reported in one line by main.py.
USER_ERRORS = (ConfigError, DataNotFoundError, ConfigMismatch, FolderInUse)


def output_dir() -> Path:
    """The Hydra job folder (or the working directory when called outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def read_result(out_dir: Path) -> Result | None:
    """The folder's result, or None when there is none that can be read (the job then runs and
    replaces it)."""
    path = out_dir / RESULT_FILE
    if not path.exists():
        return None
    try:
        return Result.read(path)
    except (OSError, ResultError) as err:
        log.warning("ignoring %s: %s", path, err)
        return None


def run(cfg: DictConfig, out_dir: Path | None = None) -> float:
    """Run one job; returns its final test metric (for sweepers). Raises after recording a failure.

    The job owns its folder for its whole life (one writer; FolderInUse otherwise), and only reuses
    what the folder holds (a finished result, a checkpoint) when it was made with the same config
    (ConfigMismatch otherwise, before anything is written)."""
    out_dir = out_dir or output_dir()
    with folder_lock(out_dir):
        identity = config_identity(cfg)
        finished = claim_folder(cfg, out_dir, identity)
        if finished is not None:
            return finished
        return _run_claimed(cfg, out_dir, identity)


def claim_folder(cfg: DictConfig, out_dir: Path, identity: dict[str, Any]) -> float | None:
    """Decide what this job does with what its folder holds, before anything is written.

    Only two things are ever reused: a finished result (the job is skipped) and a checkpoint (the
    job resumes). Either is used only if it was made with the same config; one of another config
    is refused (ConfigMismatch), never reused or overwritten. ``restart=true`` moves a finished job,
    or one of another config, to replaced/ and starts over; an unfinished job of the same config
    resumes even then (so a requeued ``restart=true`` job does not start over each time).
    Returns the previous test metric when the job is skipped, else None (run it).
    """
    restart = bool(cfg.get("restart", False))
    previous = read_result(out_dir)
    if previous is not None and previous.status == Status.DONE:
        what, found, recorded = "a finished job", True, previous.config_identity
    elif _has_checkpoint(out_dir):
        checkpoint = Checkpointer(out_dir).load()  # damaged files are moved aside here, as on resume
        what = f"a checkpoint (step {(checkpoint or {}).get('progress', {}).get('step', '?')})"
        found, recorded = checkpoint is not None, (checkpoint or {}).get("config_identity")
    else:
        return None  # nothing to reuse: a fresh job (a failed record without a checkpoint is replaced)
    diffs = _identity_differences(out_dir, found, recorded, identity)
    finished = what == "a finished job"
    if restart and (diffs or finished):
        aside = set_aside(out_dir)
        log.warning("restart=true: the previous job in %s was moved to %s", out_dir, aside.relative_to(out_dir))
        return None
    if diffs:
        raise ConfigMismatch(mismatch_message(out_dir, what, diffs))
    if finished:
        log.info(
            "%s already holds a finished result of this config; skipping (restart=true reruns it)",
            out_dir / RESULT_FILE,
        )
        return float(previous.test_metric)
    return None


def _identity_differences(out_dir: Path, found: bool, recorded: Any, identity: dict[str, Any]) -> list[str]:
    """The keys on which a result or checkpoint (``found``, with its ``recorded`` identity) differs
    from this job's config. Records written before identities existed are compared with the
    folder's config_resolved.yaml on shared keys."""
    if not found:
        return []
    if isinstance(recorded, dict):
        return differences(recorded, identity)
    legacy = recorded_identity(out_dir)
    return legacy_differences(legacy, identity) if legacy is not None else []


def _has_checkpoint(out_dir: Path) -> bool:
    ckpt = Checkpointer(out_dir)
    return ckpt.path.exists() or ckpt.previous.exists()


def _run_claimed(cfg: DictConfig, out_dir: Path, identity: dict[str, Any]) -> float:
    timer = PhaseTimer()
    task = Task(str(cfg.dataset.task), int(cfg.dataset.num_outputs))
    result = Result(
        status=Status.RUNNING,
        method=str(cfg.method.name),
        dataset=str(cfg.dataset.name),
        model=model_name(cfg),
        seed=int(cfg.seed),
        experiment=cfg.get("experiment"),
        metric_name=task.metric_name,
        versions=versions(),
        git_commit=git_commit(),
        config_fingerprint=fingerprint(identity),
        config_identity=identity,
        overrides=_task_overrides(),
    )
    wandb: WandbLogger | None = None
    tracker: Tracker | None = None
    method: Method | None = None
    try:
        validate(cfg)
        method = build_method(cfg)  # a bad method value fails here, before any data is loaded
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
        device = apply_runtime(cfg.runtime, result)
        tracker = Tracker(out_dir)
        job, model = build_job(cfg, out_dir, device, tracker, timer)  # missing data fails here, before W&B
        wandb = tracker.wandb = WandbLogger(cfg, out_dir)
        with deferred_stop_signals():  # Slurm's time-limit/preemption warning: checkpoint, then stop
            progress = fit(job, model, method)
        curves = learning_curves(tracker, task.metric_name, out_dir / "learning_curves.png", job.title)
        tracker.image("plots/learning_curves", curves, "train", progress.step)
        result.add_summary(method.summary())
        result.test_metric = progress.final_test
        result.final_val_metric = progress.final_val
        result.best_val_metric = progress.best_val
        result.best_val_step = progress.best_step
        result.test_metric_at_best_val = progress.test_at_best_val
        result.steps = progress.step
        result.status = Status.DONE
    except BaseException as err:
        # SystemExit/KeyboardInterrupt: stopped from outside (Ctrl-C, or submitit exiting after a
        # preemption/time-limit requeue); the next start in this folder resumes from the checkpoint.
        stopped = isinstance(err, (SystemExit, KeyboardInterrupt))
        result.status = Status.INTERRUPTED if stopped else Status.FAILED
        result.error = f"{type(err).__name__}: {err}"
        result.traceback = traceback.format_exc()
        if method is not None:
            _add_summary_safely(result, method)  # the learned loss's last health and dead-loss count
        raise
    finally:
        result.wall_time_s = WallTime.from_dict({**timer.snapshot(), "total": timer.total()})  # over every attempt
        result.write(out_dir / RESULT_FILE)
        if tracker is not None:
            tracker.close()
        if wandb is not None:
            wandb.result(result.to_dict())
            wandb.finish(failed=result.status != Status.DONE)
    log.info(
        "[%s/%s/%s seed=%s] test %s = %.4f  (best val %.4f)  in %.1f s -> %s",
        result.dataset,
        result.model,
        result.method,
        result.seed,
        task.metric_name,
        result.test_metric,
        result.best_val_metric,
        result.wall_time_s.total,
        out_dir,
    )
    return float(result.test_metric)


def apply_runtime(runtime: DictConfig, result: Result) -> torch.device:
    """Apply the ``runtime`` switches to this process, once, as the job starts: torch's thread count,
    glibc's allocator, deterministic algorithms; returns the device. What took effect goes to
    ``result`` (result.json's threads, cpu_memory_reuse and device). channels_last and progress are
    read where the model and the loop are built."""
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None
    result.threads = configure_threads(runtime.threads, launcher)
    result.cpu_memory_reuse = configure_cpu_memory(runtime.cpu_memory)
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True)
    device = resolve_device(str(runtime.device))
    result.device = str(device)
    return device


def _add_summary_safely(result: Result, method: Method) -> None:
    try:
        result.add_summary(method.summary())
    except Exception:  # noqa: BLE001 - a method that failed early may have nothing to summarise
        pass


def _task_overrides() -> list[str] | None:
    """The job's command-line overrides (what the sweep report groups by), kept in result.json
    because Hydra rewrites .hydra/overrides.yaml on every start, even one that is then refused."""
    if not HydraConfig.initialized():
        return None
    return [str(o) for o in HydraConfig.get().overrides.task]


def build_job(
    cfg: DictConfig, out_dir: Path, device: torch.device, tracker: Tracker, timer: PhaseTimer | None = None
) -> tuple[JobContext, nn.Module]:
    """Seed, load the data and build the job's model (theta_0) and shared services. The context
    takes from the config, once, every value the loop and the methods read."""
    seed = int(cfg.seed)
    seed_everything(seed)
    data = load_data(cfg.dataset, device)
    check_batch_size(cfg, data)
    data.channels_last = _channels_last(cfg)
    build_model = partial(_build_model, cfg, device)
    model = build_model()  # built before any offline phase: every method starts from the same theta_0
    dataset = cfg.dataset
    job = JobContext(
        title=f"{dataset.name} / {model_name(cfg)} / {cfg.method.name} / seed {seed}",
        seed=seed,
        out_dir=out_dir,
        device=device,
        task=Task(str(dataset.task), int(dataset.num_outputs)),
        data=data,
        steps=int(dataset.steps),
        batch_size=int(dataset.batch_size),
        eval_batch_size=int(dataset.eval_batch_size),
        log_interval=int(dataset.log_interval),
        eval_interval=int(dataset.eval_interval),
        base_lr=float(cfg.optimizer.lr),
        build_model=build_model,
        build_optimizer=partial(_build_optimizer, cfg),
        train_batches=BatchSampler(data.train, int(dataset.batch_size), seed=seed),
        val_batches=BatchSampler(data.val, int(dataset.batch_size), seed=seed + 1_000_003),
        tracker=tracker,
        checkpoint_every=int(cfg.checkpoint.every),
        resume=bool(cfg.checkpoint.resume),
        identity=config_identity(cfg),
        progress_bar=bool(cfg.runtime.progress),
        timer=timer or PhaseTimer(),
        log=log,
    )
    return job, model


def check_batch_size(cfg: DictConfig, data: Data) -> None:
    """A batch larger than the training split cannot be drawn: refuse it rather than silently train
    on smaller batches than asked. Validation batches (for meta steps) are capped at the validation
    split, which is often smaller than a batch on the small tabular sets: that is logged."""
    size, train, val = int(cfg.dataset.batch_size), len(data.train), len(data.val)
    if size > train:
        raise ConfigError(
            f"dataset.batch_size={size} is larger than the training split of {cfg.dataset.name} "
            f"({train} examples); use at most {train}"
        )
    if size > val:
        log.info(
            "dataset.batch_size=%d exceeds the validation split (%d examples): validation batches use it whole",
            size,
            val,
        )


def build_method(cfg: DictConfig) -> Method:
    """The method, built from its typed config: ``cfg.method`` becomes the method's config dataclass
    (``OmegaConf.to_object``; its ``__post_init__`` checks run here, so a bad method value fails as a
    one-line ConfigError before any data is loaded), which the ``_target_`` class receives whole."""
    method_class = _located(str(cfg.method._target_), "method")
    return method_class(OmegaConf.to_object(cfg.method))


def _build_model(cfg: DictConfig, device: torch.device) -> nn.Module:
    model = checked_partial(cfg.model, "model")()
    return model.to(device, memory_format=torch.channels_last if _channels_last(cfg) else torch.preserve_format)


def checked_partial(node: DictConfig, key: str) -> partial:
    """``node``'s ``_target_`` with its keyword arguments, not called yet, once the config's part is
    checked: a target that does not exist, or keys its signature does not take, is a ConfigError
    (one line). The caller calls it: a ConfigError the constructor raises is its own check of the
    values; any other exception there is a bug and keeps its traceback, where Hydra's instantiate
    would have turned it into a one-line InstantiationException."""
    target = str(node._target_)
    _located(target, key)
    factory = instantiate(node, _convert_="all", _partial_=True)
    try:
        inspect.signature(factory.func).bind(*factory.args, **factory.keywords)
    except TypeError as err:
        raise ConfigError(f"{key}: {target} does not take these keys: {err}") from None
    return factory


def _located(target: str, key: str) -> Any:
    """The object ``target`` names (module.name), or a one-line ConfigError when there is none."""
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ModuleNotFoundError as err:
        if not f"{module_name}.".startswith(f"{err.name}."):
            raise  # the module exists but imports one that does not: not a typo in the config
        module = None
    if module is None or not hasattr(module, name):
        raise ConfigError(f"{key}._target_: there is no {target}")
    return getattr(module, name)


def _channels_last(cfg: DictConfig) -> bool:
    return bool(cfg.runtime.channels_last) and len(cfg.dataset.input_shape) == 3  # images only


def _build_optimizer(
    cfg: DictConfig, params: list[nn.Parameter]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    node = OmegaConf.to_container(cfg.optimizer, resolve=True)
    schedule = node.pop("schedule")
    optimizer = instantiate(node)(params)
    return optimizer, instantiate(schedule)(optimizer)
