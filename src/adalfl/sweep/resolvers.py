"""OmegaConf resolvers used by conf/hydra settings (registered before Hydra composes).

Launchers that run jobs in other processes (joblib workers, submitit/Slurm jobs, requeued jobs)
do not execute main.py there; Hydra ships the registered resolvers to them inside its pickled
singleton state, which is why each resolver must be a module-level function (pickled by reference).
tests/test_resume.py and tests/test_slurm.py exercise this through real sweeps.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def job_subdir(override_dirname: str, job_num: int) -> str:
    """A sweep job's folder: its overrides (``dataset=digits,seed=1``), or its number when the
    job has no overrides of its own."""
    return override_dirname if override_dirname else f"job{job_num}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("adalfl_job_subdir"):
        OmegaConf.register_new_resolver("adalfl_job_subdir", job_subdir)
