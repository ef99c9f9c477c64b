"""Config schemas, registered with Hydra's ConfigStore so that a misspelt key or a value of the
wrong type fails at start-up with a message naming the key, before any data is loaded.

Groups with one shape (dataset, optimizer, logger) have their schema here. Methods differ in
their keys, so each method module declares its own ``CONFIG_SCHEMA`` dataclass and
``adalfl.configstore.register_configs`` discovers it: a new method is one module plus one YAML
file. That dataclass is also what the method's class receives (``adalfl.app.build_method``), with
its defaults and its checks (``__post_init__``) in one place; choices are ``Enum`` fields, refused
at composition (docs/methods.md, "One form per config"). This module sits below everything else (every layer may raise a ConfigError), so it never
imports the methods itself.
Model configs are plain ``_target_`` nodes (their keyword arguments differ per architecture);
Hydra's struct mode still rejects unknown keys, and a wrong type is reported when the model is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional, TypeVar

from omegaconf import MISSING, DictConfig

from adalfl.cpu_memory import CHOICES as CPU_MEMORY_CHOICES


class ConfigError(ValueError):
    """A config value that is well-typed but unusable (e.g. a negative learning rate)."""


E = TypeVar("E", bound=Enum)


def choice(choices: type[E], value: Any, key: str) -> E:
    """``value`` as a member of the enumeration ``choices``, or a ConfigError naming ``key`` and the
    allowed values. A composed config holds members already (OmegaConf refuses anything else); this
    is for a config built in Python from strings."""
    try:
        return choices(value)
    except ValueError:
        raise ConfigError(f"{key} must be one of {[c.value for c in choices]}, got {value!r}") from None


@dataclass
class DatasetConfig:
    name: str = MISSING
    # import path of a function (dataset config) -> adalfl.data.Data: adalfl.data.images.load_torchvision
    # or adalfl.data.tabular.load_table read any set the keys below describe (docs/datasets.md)
    loader: str = MISSING
    task: str = MISSING  # "classification" or "regression"
    input_shape: List[int] = MISSING
    num_outputs: int = MISSING
    # Data folder of the datasets read from disk, laid out as torchvision / scikit-learn lay it out.
    # Relative paths are taken from the working directory; $ADALFL_DATA_ROOT overrides the default.
    root: str = "${oc.env:ADALFL_DATA_ROOT,data}"
    download: bool = False
    # --- where the data comes from (read by load_torchvision / load_table)
    source: Optional[str] = (
        None  # a torchvision.datasets class (MNIST, KMNIST, CIFAR10...) or a sklearn.datasets load_*/fetch_* function
    )
    source_args: Dict[str, Any] = field(default_factory=dict)  # extra arguments to it (EMNIST: {split: balanced})
    part_arg: str = "train"  # torchvision: the argument that picks a part: train (train=True/False) or split (split="train"/"test": SVHN)
    folder: str = ""  # under root: torchvision's root or scikit-learn's data_home, or the folder that holds `file`
    file: Optional[str] = None  # a comma-separated text file (CSV with a header row, or UCI *.data with `columns`)
    url: Optional[str] = None  # where download=true fetches `file` from
    columns: Optional[List[str]] = None  # column names of a file without a header row
    target: Optional[str] = None  # the file's target column
    drop: List[str] = field(default_factory=list)  # the file's columns that are not features
    max_missing: Optional[float] = (
        None  # drop feature columns missing in more than this fraction of rows, fill the other gaps with the training mean; null: none may be missing
    )
    title: Optional[str] = None  # the dataset's name in messages (default: source, or file)
    val_fraction: float = 0.1
    test_fraction: Optional[float] = None  # only for sets without an official test partition
    split_seed: int = 0
    # budget
    steps: int = MISSING
    batch_size: int = 128
    eval_interval: int = 100
    log_interval: int = 10
    eval_batch_size: int = 1024
    # base optimiser defaults for this dataset (interpolated into the optimizer group)
    lr: float = MISSING
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: List[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    augment: List[str] = field(default_factory=list)
    notes: str = ""


@dataclass
class ScheduleConfig:
    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    _partial_: bool = True
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class OptimizerConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = MISSING
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class LoggerConfig:
    name: str = MISSING  # "wandb" or "none"
    mode: str = "offline"  # online | offline | disabled
    project: str = "adalfl"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    # Seconds wandb.init may take before the job goes on without W&B (W&B's own default is 90;
    # an unreachable server or a rejected key then cost a minute and more per job).
    init_timeout: float = 15.0


@dataclass(kw_only=True)
class MethodConfig:
    """Keys every method has; methods extend it with their own dataclass, which is at once the
    schema of conf/method/<name>.yaml and the object the method's class receives
    (``adalfl.app.build_method``: ``OmegaConf.to_object``, which runs its ``__post_init__`` checks).
    Defaults are written once, in the dataclass; the YAML repeats them with their sources, and
    tests/test_config.py holds the two equal."""

    _target_: str = MISSING
    name: str = MISSING


@dataclass
class OfflineConfig:
    """Offline-phase budgets of the learned-loss and learned-lr methods, in one place so that one
    experiment file (or one override) sizes every method at once: the method configs take their
    defaults from here by interpolation (conf/method/*.yaml), and ``method.*`` still overrides one
    method. Methods without an offline phase ignore it."""

    steps: int = 2500  # paper: S_init, meta steps of Algorithms 1/3 (adalfl, metalr, taylorglo search=gradient)
    ml3_steps: int = 250  # author's code (meta_gradient_steps): ML3's offline meta steps
    population: int = 25  # author's code: CMA-ES population per generation (taylorglo search=cmaes)
    generations: int = 50  # author's code: CMA-ES generations (taylorglo search=cmaes)
    partial_steps: int = 500  # author's code: base steps of one candidate's partial training (taylorglo search=cmaes)


@dataclass
class CheckpointConfig:
    every: int = 500  # base steps between checkpoints; 0 disables them
    resume: bool = True


@dataclass
class RuntimeConfig:
    """How a job runs, not what it computes: applied once at the start of the job (adalfl.app.run),
    left out of the config identity (a rerun with other switches finds its folder, adalfl.train.folder)
    and out of sweep folder names (conf/config.yaml's hydra.job.config.override_dirname)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: str = "auto"  # PyTorch threads per job: auto (see adalfl.sweep.threads) or a count
    cpu_memory: str = "reuse"  # reuse | system: glibc keeps freed memory for reuse (adalfl.cpu_memory)
    channels_last: bool = True  # image models and batches in NHWC memory format (CPU pooling is ~10x faster)
    deterministic: bool = False  # torch.use_deterministic_algorithms, for GPU bit-reproducibility
    progress: bool = True  # progress bar when attached to a terminal


# The run-time switches sat at the config's root before the `runtime` node held them: an override of
# an old name is refused by main.py with the new one (Hydra would say "Key 'threads' not in
# 'Config'", and `+threads=1` would add an unused key and run the job without the setting).
MOVED_KEYS = {name: f"runtime.{name}" for name in RuntimeConfig.__dataclass_fields__}


def moved_key_hint(overrides: list[str]) -> str | None:
    """One line naming the first command-line override that uses a moved key, with its new name."""
    for override in overrides:
        key, eq, value = override.partition("=")
        name = key.lstrip("+~")
        if name in MOVED_KEYS and (eq or key.startswith("~")):
            new = MOVED_KEYS[name]
            return f"{name} is now {new}: write {new}={value}" if eq else f"{name} is now {new}"
    return None


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    method: Any = MISSING
    optimizer: Any = MISSING
    logger: Any = MISSING
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    experiment: Optional[str] = None  # set by experiment configs; tags runs and names sweep folders
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # true: a job folder holding a finished job, or a job of another config, has it moved to
    # replaced/<time>/ and the job starts over (adalfl.train.folder); otherwise it changes nothing.
    restart: bool = False


def model_name(cfg: DictConfig) -> str:
    """Short model name for folders, groups and tables: the class name, lower-cased."""
    return str(cfg.model._target_).rsplit(".", 1)[-1].lower()


def _positive(value: Any, key: str) -> None:
    if not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str, key: str = "runtime.device") -> None:
    """Refuse a device this machine cannot give, naming the allowed values (``key``: the setting's name)."""
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"{key} must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    import torch

    fallback = f"use {key}=auto or {key}=cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key}={name}: torch sees no CUDA device on this machine; {fallback}")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise ConfigError(f"{key}={name}: torch sees {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}=mps: this machine has no usable MPS device; {fallback}")


def check_runtime(runtime: DictConfig) -> None:
    """Refuse run-time switches this machine cannot apply (the ``runtime`` node)."""
    check_device(str(runtime.device))
    if runtime.threads != "auto" and not (str(runtime.threads).isdigit() and int(runtime.threads) > 0):
        raise ConfigError(f"runtime.threads must be auto or a positive integer, got {runtime.threads!r}")
    if runtime.cpu_memory not in CPU_MEMORY_CHOICES:
        raise ConfigError(f"runtime.cpu_memory must be one of {list(CPU_MEMORY_CHOICES)}, got {runtime.cpu_memory!r}")


def validate(cfg: DictConfig) -> None:
    """Refuse values that type-check but cannot train, before any compute."""
    check_runtime(cfg.runtime)
    _positive(cfg.optimizer.lr, "optimizer.lr")
    _positive(cfg.dataset.steps, "dataset.steps")
    _positive(cfg.dataset.batch_size, "dataset.batch_size")
    _positive(cfg.dataset.eval_interval, "dataset.eval_interval")
    _positive(cfg.dataset.log_interval, "dataset.log_interval")
    _positive(cfg.dataset.eval_batch_size, "dataset.eval_batch_size")
    for key in ("momentum", "weight_decay", "dampening"):
        if cfg.optimizer[key] < 0:
            raise ConfigError(f"optimizer.{key} must be >= 0, got {cfg.optimizer[key]!r}")
    # A momentum of 1 or more never forgets a gradient: the step grows without bound.
    if not cfg.optimizer.momentum < 1:
        raise ConfigError(f"optimizer.momentum must be in [0, 1), got {cfg.optimizer.momentum!r}")
    if not cfg.optimizer.dampening <= 1:
        raise ConfigError(f"optimizer.dampening must be in [0, 1], got {cfg.optimizer.dampening!r}")
    if cfg.optimizer.nesterov and (cfg.optimizer.momentum <= 0 or cfg.optimizer.dampening != 0):
        raise ConfigError("optimizer.nesterov needs optimizer.momentum > 0 and optimizer.dampening = 0")
    if not 0 < cfg.dataset.val_fraction < 1:
        raise ConfigError(f"dataset.val_fraction must be in (0, 1), got {cfg.dataset.val_fraction!r}")
    if cfg.dataset.task not in ("classification", "regression"):
        raise ConfigError(f"dataset.task must be 'classification' or 'regression', got {cfg.dataset.task!r}")
    if not cfg.logger.init_timeout > 0:
        raise ConfigError(f"logger.init_timeout must be positive (seconds), got {cfg.logger.init_timeout!r}")
    if cfg.logger.mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.mode must be online, offline or disabled, got {cfg.logger.mode!r}")
    if cfg.checkpoint.every < 0:
        raise ConfigError(f"checkpoint.every must be >= 0, got {cfg.checkpoint.every!r}")
