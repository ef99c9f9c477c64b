"""How many PyTorch threads a job may use.

Parallel jobs on one machine must split its cores between them: two jobs that each start one
thread per core run slower together than one after the other. Environment variables such as
OMP_NUM_THREADS are read when PyTorch loads, which in a launcher's worker process may already have
happened, so the job sets the count itself with ``torch.set_num_threads`` from the ``runtime.threads``
config value.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: respects taskset, cgroup cpusets, Slurm)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for_job(setting: str | int, launcher: Mapping[str, Any] | None) -> int | None:
    """The thread count for ``runtime.threads=<setting>``; None means leave PyTorch's default.

    ``auto``: inside a Slurm allocation, the CPUs Slurm gave the job; under the joblib launcher
    (``hydra/launcher=local``), the available CPUs divided by the number of workers; under submitit,
    its ``cpus_per_task``; otherwise (one job at a time) PyTorch's default, all cores.
    """
    if str(setting) != "auto":
        return int(setting)
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm_cpus and slurm_cpus.isdigit():
        return max(1, int(slurm_cpus))
    launcher = launcher or {}
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        workers = int(launcher.get("n_jobs") or 1)
        workers = available_cpus() if workers < 1 else workers
        return max(1, available_cpus() // workers)
    if "submitit" in target and launcher.get("cpus_per_task"):
        return max(1, int(launcher["cpus_per_task"]))
    return None


def configure_threads(setting: str | int, launcher: Mapping[str, Any] | None) -> int:
    """Apply ``threads_for_job`` and return the thread count in effect (recorded in result.json)."""
    count = threads_for_job(setting, launcher)
    if count is not None and count != torch.get_num_threads():
        torch.set_num_threads(count)
    return torch.get_num_threads()
