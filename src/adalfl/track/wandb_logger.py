"""Weights & Biases, kept strictly optional: a logging service never costs a run.

Offline is the default so a fresh machine needs no account; the run's files land in the job's
folder (``<job>/wandb/offline-run-*``) and ``wandb sync`` uploads them later.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adalfl.config import model_name

log = logging.getLogger(__name__)


def has_credentials() -> bool:
    """Whether online mode can log in without asking (W&B would otherwise prompt or fail)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC")).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


class WandbLogger:
    """One W&B run per job. Every call is a no-op once W&B failed to start."""

    def __init__(self, cfg: DictConfig, out_dir: Path) -> None:
        self.run: Any = None
        self._step_metrics: set[str] = set()
        mode = cfg.logger.mode
        if cfg.logger.name != "wandb" or mode == "disabled":
            return
        if mode == "online" and not has_credentials():
            log.warning(
                "W&B online mode needs credentials (`wandb login` or WANDB_API_KEY); "
                "continuing without W&B, local results are unaffected"
            )
            return
        tags = list(cfg.logger.tags) + ([cfg.experiment] if cfg.get("experiment") else [])
        try:
            import wandb

            self.run = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=f"{cfg.dataset.name}-{model_name(cfg)}-{cfg.method.name}",
                job_type=cfg.method.name,
                name=out_dir.name,
                tags=tags,
                config=OmegaConf.to_container(cfg, resolve=True),
                dir=str(out_dir),
                mode=mode,
                id=run_id(out_dir),
                resume="allow",
                reinit="finish_previous",
                settings=wandb.Settings(init_timeout=float(cfg.logger.init_timeout), console="off", silent=True),
            )
        except Exception as err:  # noqa: BLE001 - any failure here must not cost the run
            log.warning("W&B could not start (%s: %s); continuing without W&B", type(err).__name__, err)
            self.run = None

    def log(self, phase: str, step: int, scalars: dict[str, float]) -> None:
        if self.run is None:
            return
        step_key = f"{phase}/step"
        try:
            for key in scalars:
                if key not in self._step_metrics:
                    self.run.define_metric(key, step_metric=step_key)
                    self._step_metrics.add(key)
            self.run.log({**scalars, step_key: step})
        except Exception as err:  # noqa: BLE001
            self._give_up(err)

    def image(self, key: str, path: Path, phase: str, step: int) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Image(str(path)), f"{phase}/step": step})
        except Exception as err:  # noqa: BLE001
            self._give_up(err)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(values)
        except Exception as err:  # noqa: BLE001
            self._give_up(err)

    def result(self, record: dict[str, Any]) -> None:
        """The job's result.json record as the run's summary (see ``run_summary``)."""
        self.summary(run_summary(record))

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as err:  # noqa: BLE001
            log.warning("W&B finish failed (%s); local results are complete", err)
        self.run = None

    def _give_up(self, err: Exception) -> None:
        log.warning("W&B logging failed (%s: %s); continuing without W&B", type(err).__name__, err)
        try:
            self.run.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass
        self.run = None


# What a W&B runs table needs to rebuild the paper's table with W&B's own grouping (by dataset, model
# and method, mean ± std over seeds), as in result.json.
SUMMARY_KEYS = (
    "status",
    "dataset",
    "model",
    "method",
    "seed",
    "metric_name",
    "test_metric",
    "best_val_metric",
    "best_val_step",
    "test_metric_at_best_val",
    "final_val_metric",
    "steps",
)


def run_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A job's W&B summary from its result.json record: the keys above that the job reached, and
    the wall time of each phase as ``wall_time_s/<phase>`` (offline, train, eval, total)."""
    summary = {key: record[key] for key in SUMMARY_KEYS if record.get(key) is not None}
    summary.update({f"wall_time_s/{phase}": seconds for phase, seconds in record.get("wall_time_s", {}).items()})
    return summary


def run_id(out_dir: Path, file_name: str = ".wandb_run_id") -> str:
    """A run id stored in the folder, so a resumed job (or a rebuilt sweep report) continues the
    same W&B run."""
    path = out_dir / file_name
    if path.exists():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id
