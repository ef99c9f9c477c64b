"""Who may write a job folder, and with which config.

A job folder is reused on purpose: a rerun skips a finished job and resumes an unfinished one from
its checkpoint. That is only sound when the rerun asks for the same job. Two guards make it so:

* **Config identity.** Every result.json and every checkpoint records the job's config (resolved,
  flattened, minus the run-time switches that may change between attempts: the ``runtime`` node
  (device, threads...), logging, checkpointing...). A rerun whose config differs is refused with
  one line naming the differing keys; ``restart=true`` sets the old job aside (into ``replaced/<time>/``) and starts over.
* **One writer.** An exclusive ``flock`` on ``<folder>/.lock`` for the job's whole life. The OS drops
  it when the process ends, however it ends, so a killed job never leaves a stale lock. (On NFS,
  Linux maps flock to POSIX byte-range locks, which the server arbitrates across machines.)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

# Keys that may differ between attempts of one job without changing its results (or only in ways
# the user chose per attempt, like the device): left out of the identity. A prefix covers its
# subtree. dataset.root/download say where the same data lives or how it arrives.
RUNTIME_KEYS = ("runtime", "restart", "checkpoint", "logger", "hydra", "dataset.root", "dataset.download")
# The run-time switches sat at the config's root before the `runtime` node held them. Identities
# recorded in result.json and checkpoints never held them (left out then as now, so the recorded
# identities and fingerprints are unchanged), but an older folder's config_resolved.yaml, read when
# there is no recorded identity (recorded_identity), still has them at the root: leave them out too.
LEGACY_RUNTIME_KEYS = ("device", "threads", "progress", "cpu_memory", "channels_last", "deterministic")
LOCK_FILE = ".lock"
REPLACED_DIR = "replaced"
# Never moved aside on restart: Hydra's record and log of the current attempt, the lock itself.
_KEEP_ON_RESTART = {".hydra", LOCK_FILE, REPLACED_DIR}
_MAX_NAMED = 4  # differing keys named in a refusal; the rest are counted


class FolderInUse(RuntimeError):
    """Another live process is running a job in this folder."""


class ConfigMismatch(RuntimeError):
    """The folder holds a job (result or checkpoint) of another config."""


def _is_runtime(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in (*RUNTIME_KEYS, *LEGACY_RUNTIME_KEYS))


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = node


def identity_of(container: dict) -> dict[str, Any]:
    """The identity of a plain (resolved) config: flat ``a.b.c -> value``, run-time switches removed."""
    flat: dict[str, Any] = {}
    _flatten(container, "", flat)
    return {key: flat[key] for key in sorted(flat) if not _is_runtime(key)}


def config_identity(cfg: DictConfig) -> dict[str, Any]:
    """The job's identity: every resolved value that shapes its results."""
    return identity_of(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))  # type: ignore[arg-type]


def fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of the identity, for humans and tables (the full identity is what is compared)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """``key was <recorded>, now <asked>`` for every key whose value differs (absent on one side included)."""
    missing = object()
    show = lambda v: "absent" if v is missing else json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    out = []
    for key in sorted(set(recorded) | set(asked)):
        old, new = recorded.get(key, missing), asked.get(key, missing)
        # Equal, or equal once written as JSON (result.json's lists for tuples, NaN for NaN).
        if not (old == new or show(old) == show(new)):
            out.append(f"{key} was {show(old)}, now {show(new)}")
    return out


def describe(diffs: list[str]) -> str:
    named = "; ".join(diffs[:_MAX_NAMED])
    return named + (f"; and {len(diffs) - _MAX_NAMED} more" if len(diffs) > _MAX_NAMED else "")


def recorded_identity(out_dir: Path) -> dict[str, Any] | None:
    """For results and checkpoints written before identities existed: the identity of the folder's
    config_resolved.yaml (saved by every attempt), or None when there is none."""
    legacy = out_dir / "config_resolved.yaml"
    if not legacy.exists():
        return None
    try:
        return identity_of(OmegaConf.to_container(OmegaConf.load(legacy), resolve=False))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - an unreadable legacy record is no record
        return None


def legacy_differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """Differences on the keys both sides have: a config saved by an older version of the code
    lacks keys added since, which say nothing about whether the user changed a setting."""
    common = set(recorded) & set(asked)
    return differences({k: recorded[k] for k in common}, {k: asked[k] for k in common})


def mismatch_message(out_dir: Path, what: str, diffs: list[str]) -> str:
    return (
        f"{out_dir} holds {what} of another config ({describe(diffs)}); nothing was reused. Run this job "
        "in another folder (hydra.run.dir=... or hydra.sweep.dir=...), or add restart=true to move the "
        "old job to replaced/ and start over"
    )


def set_aside(out_dir: Path) -> Path:
    """Move everything the previous job left (results, checkpoints, metrics, plots, W&B run) into
    ``replaced/<time>/``, keeping Hydra's record and log of this attempt. Returns that folder."""
    target = out_dir / REPLACED_DIR / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
    target.mkdir(parents=True)
    for path in out_dir.iterdir():
        if path.name in _KEEP_ON_RESTART or path.suffix == ".log":
            continue
        shutil.move(str(path), str(target / path.name))
    return target


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"


@contextmanager
def folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock for the block; raise FolderInUse at once if another process
    holds it. Who holds it (pid, host, start time) is written into the lock file for the message."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / LOCK_FILE
    handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below; never truncated before we own it
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderInUse(
                f"{out_dir} is in use by a running job ({_holder(lock_path)}): one writer per job folder. "
                "Wait for it to end, or run this job in another folder (hydra.run.dir=...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            )
        )
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock (the OS does the same if the process dies first)
