"""``result.json``: what a job leaves as its outcome, as one typed record.

The job (``adalfl.app``) writes it through ``Result``; the sweep report, its figures and the tests
read it back through ``Result.read``. The file's JSON keys and layout are those the job has always
written, so results from older versions still read: keys they lack are None (or absent from the
sub-records), and a file that is no job result at all (not JSON, not an object, no known status,
no dataset/model/method/seed/metric name) is refused with ``ResultError`` naming the file and why.

This module is deliberately low-level: it imports nothing from methods, train or sweep.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Mapping

from adalfl.utils import atomic_write_json

RESULT_FILE = "result.json"


class Status(StrEnum):
    """How a job ended. A StrEnum, so it compares equal to (and is written as) its plain string."""

    RUNNING = "running"  # the job's record before it ends; a file never keeps it unless a writer died mid-way
    DONE = "done"  # trained and evaluated: the metrics are final
    FAILED = "failed"  # an error ended it (``error``/``traceback``); rerunning starts over unless it checkpointed
    INTERRUPTED = "interrupted"  # stopped from outside (signal, preemption, Ctrl-C); a rerun in its folder resumes


class ResultError(ValueError):
    """A file or record that is not a job result (or not one this version can read)."""


def _check(value: Any, kind: type, where: str) -> Any:
    """``value`` as ``kind`` (None stays None); ints are accepted as floats, bools never as numbers."""
    if value is None:
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ResultError(f"{where} is {value!r}, expected an integer")
    if isinstance(value, kind):
        return value
    raise ResultError(f"{where} is {value!r}, expected {kind.__name__}")


def _unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ResultError(
            f"{where} has keys this version does not know: {', '.join(extra)} "
            "(written by a newer version? add them to adalfl/result.py)"
        )


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@dataclass
class WallTime:
    """Seconds per phase, summed over the attempts of a resumed job; a phase that never ran is None
    (absent from the file). ``total`` is the job's whole wall time, phases and set-up alike."""

    offline: float | None = None  # offline meta-learning (ML3, TaylorGLO, AdaLFL/MetaLR initialisation)
    train: float | None = None
    eval: float | None = None
    total: float | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "wall_time_s") -> WallTime:
        data = _check(data, dict, where)
        _unknown(data, {"offline", "train", "eval", "total"}, where)
        return cls(**{k: _check(v, float, f"{where}.{k}") for k, v in data.items()})

    def to_dict(self) -> dict[str, float]:
        return _without_none({"offline": self.offline, "train": self.train, "eval": self.eval, "total": self.total})


@dataclass
class LossHealth:
    """The learned loss's final shape check (``adalfl.methods.learned_loss.loss_health`` says what
    each value means). ``flat_t1`` and ``free_miss`` exist for classification only."""

    scale: float
    free_wrong: float
    flat_t0: float
    flat_t1: float | None = None
    free_miss: float | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "loss_health") -> LossHealth:
        data = _check(data, dict, where)
        _unknown(data, {"scale", "free_wrong", "flat_t0", "flat_t1", "free_miss"}, where)
        for key in ("scale", "free_wrong", "flat_t0"):
            if data.get(key) is None:
                raise ResultError(f"{where} lacks {key}")
        return cls(**{k: _check(v, float, f"{where}.{k}") for k, v in data.items()})

    def to_dict(self) -> dict[str, float]:
        return _without_none(
            {
                "scale": self.scale,
                "free_wrong": self.free_wrong,
                "flat_t0": self.flat_t0,
                "flat_t1": self.flat_t1,
                "free_miss": self.free_miss,
            }
        )


@dataclass
class DeadLoss:
    """Logged steps at which the learned loss gave no gradient (see ``method.dead_loss``)."""

    dead_logged_steps: int
    longest_run: int

    @classmethod
    def from_dict(cls, data: Any, where: str = "dead_loss") -> DeadLoss:
        data = _check(data, dict, where)
        _unknown(data, {"dead_logged_steps", "longest_run"}, where)
        values = {k: _check(data.get(k), int, f"{where}.{k}") for k in ("dead_logged_steps", "longest_run")}
        if None in values.values():
            raise ResultError(f"{where} lacks dead_logged_steps or longest_run")
        return cls(**values)

    def to_dict(self) -> dict[str, int]:
        return {"dead_logged_steps": self.dead_logged_steps, "longest_run": self.longest_run}


# Fields written as null when unset, as the job always has; every other unset field is left out.
ALWAYS_WRITTEN = (
    "experiment",
    "versions",
    "git_commit",
    "config_fingerprint",
    "config_identity",
    "overrides",
    "wall_time_s",
)


@dataclass
class Result:
    """One job's ``result.json``."""

    # Identity: what the job was (the sweep report's rows and columns).
    status: Status
    method: str
    dataset: str
    model: str
    seed: int
    metric_name: str  # "error_rate" (classification) or "mse" (regression); every metric below is in it
    experiment: str | None = None
    config_identity: dict[str, Any] | None = None  # resolved config minus run-time switches (adalfl.train.folder)
    config_fingerprint: str | None = None
    overrides: list[str] | None = None  # the command-line overrides (None outside Hydra)
    # Provenance and run-time switches.
    versions: dict[str, str] | None = None
    git_commit: str | None = None
    device: str | None = None
    threads: int | None = None
    cpu_memory_reuse: bool | None = None
    # Metrics (set when the job is done).
    test_metric: float | None = None  # the final model's: what the tables report
    final_val_metric: float | None = None
    best_val_metric: float | None = None
    best_val_step: int | None = None
    test_metric_at_best_val: float | None = None
    steps: int | None = None
    # The method's own final facts (learned-loss methods).
    loss_health: LossHealth | None = None
    dead_loss: DeadLoss | None = None
    # Any other fact a method's summary() gives (a new method needs no change here to report one).
    method_facts: dict[str, Any] | None = None
    # Why it ended early (failed or interrupted).
    error: str | None = None  # "<exception type>: <message>"
    traceback: str | None = None
    wall_time_s: WallTime = field(default_factory=WallTime)

    @property
    def finished(self) -> bool:
        """Done with a finite final test metric: a value the tables can use."""
        return self.status == Status.DONE and self.test_metric is not None and math.isfinite(self.test_metric)

    def add_summary(self, summary: Mapping[str, Any]) -> None:
        """Take a method's ``summary()`` (its final facts) into their fields."""
        other = {k: v for k, v in summary.items() if k not in {"loss_health", "dead_loss"}}
        if other:
            self.method_facts = {**(self.method_facts or {}), **other}
        if "loss_health" in summary:
            self.loss_health = LossHealth.from_dict(summary["loss_health"])
        if "dead_loss" in summary:
            self.dead_loss = DeadLoss.from_dict(summary["dead_loss"])

    # --- the file ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the job has always written."""
        out: dict[str, Any] = {
            "status": Status(self.status).value,
            "method": self.method,
            "dataset": self.dataset,
            "model": self.model,
            "seed": self.seed,
            "metric_name": self.metric_name,
            "experiment": self.experiment,
            "config_identity": self.config_identity,
            "config_fingerprint": self.config_fingerprint,
            "overrides": self.overrides,
            "versions": self.versions,
            "git_commit": self.git_commit,
            "device": self.device,
            "threads": self.threads,
            "cpu_memory_reuse": self.cpu_memory_reuse,
            "test_metric": self.test_metric,
            "final_val_metric": self.final_val_metric,
            "best_val_metric": self.best_val_metric,
            "best_val_step": self.best_val_step,
            "test_metric_at_best_val": self.test_metric_at_best_val,
            "steps": self.steps,
            "loss_health": self.loss_health.to_dict() if self.loss_health else None,
            "dead_loss": self.dead_loss.to_dict() if self.dead_loss else None,
            "method_facts": self.method_facts or None,
            "error": self.error,
            "traceback": self.traceback,
            "wall_time_s": self.wall_time_s.to_dict(),
        }
        return {k: v for k, v in out.items() if v is not None or k in ALWAYS_WRITTEN}

    def write(self, path: Path) -> None:
        """Atomically (temporary file, then rename): a reader never sees half a result."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "result") -> Result:
        """Parse a result.json object; ``source`` (the file) starts every error message."""
        try:
            return cls._parse(data)
        except ResultError as err:
            raise ResultError(f"{source} is not a job result this version can read: {err}") from None

    @classmethod
    def _parse(cls, data: Any) -> Result:
        if not isinstance(data, dict):
            raise ResultError(f"it is a JSON {type(data).__name__}, not an object")
        status = data.get("status")
        if status not in {s.value for s in Status}:
            raise ResultError(f"status is {status!r}, not one of {', '.join(s.value for s in Status)}")
        for key in ("method", "dataset", "model", "seed", "metric_name"):  # what every version wrote
            if data.get(key) is None:
                raise ResultError(f"it has no {key}")
        _unknown(data, set(cls.__dataclass_fields__), "it")
        get = data.get
        return cls(
            status=Status(status),
            method=_check(get("method"), str, "method"),
            dataset=_check(get("dataset"), str, "dataset"),
            model=_check(get("model"), str, "model"),
            seed=_check(get("seed"), int, "seed"),
            metric_name=_check(get("metric_name"), str, "metric_name"),
            experiment=_check(get("experiment"), str, "experiment"),
            config_identity=_check(get("config_identity"), dict, "config_identity"),
            config_fingerprint=_check(get("config_fingerprint"), str, "config_fingerprint"),
            overrides=_check(get("overrides"), list, "overrides"),
            versions=_check(get("versions"), dict, "versions"),
            git_commit=_check(get("git_commit"), str, "git_commit"),
            device=_check(get("device"), str, "device"),
            threads=_check(get("threads"), int, "threads"),
            cpu_memory_reuse=_check(get("cpu_memory_reuse"), bool, "cpu_memory_reuse"),
            test_metric=_check(get("test_metric"), float, "test_metric"),
            final_val_metric=_check(get("final_val_metric"), float, "final_val_metric"),
            best_val_metric=_check(get("best_val_metric"), float, "best_val_metric"),
            best_val_step=_check(get("best_val_step"), int, "best_val_step"),
            test_metric_at_best_val=_check(get("test_metric_at_best_val"), float, "test_metric_at_best_val"),
            steps=_check(get("steps"), int, "steps"),
            loss_health=LossHealth.from_dict(get("loss_health")) if get("loss_health") is not None else None,
            dead_loss=DeadLoss.from_dict(get("dead_loss")) if get("dead_loss") is not None else None,
            method_facts=_check(get("method_facts"), dict, "method_facts"),
            error=_check(get("error"), str, "error"),
            traceback=_check(get("traceback"), str, "traceback"),
            wall_time_s=WallTime.from_dict(get("wall_time_s") or {}),
        )

    @classmethod
    def read(cls, path: Path) -> Result:
        """The result in ``path``. OSError if it cannot be read; ResultError if it is no job result."""
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ResultError(f"{path} is not a job result: not JSON ({err})") from None
        return cls.from_dict(data, source=str(path))
