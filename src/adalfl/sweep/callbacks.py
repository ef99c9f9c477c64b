"""Hydra callbacks: the output folder is checked before Hydra writes into it, and a sweep folder's
report is kept current (see adalfl.sweep.report)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """Rebuilds results.md/.csv/.tex after every job (so a sweep that dies, or one whose jobs fail,
    still leaves its tables) and once more, with figures, when the sweep ends. With W&B on (the
    config's ``logger``), each rebuild also goes to the sweep's W&B run (adalfl.track.wandb_report).

    A report error is logged, never raised: aggregation must not cost a job its result.
    """

    def __init__(self, figures_every_job: bool = False) -> None:
        self.figures_every_job = figures_every_job

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return
        self._write(Path(hydra.sweep.dir), self.figures_every_job, config.get("logger"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(Path(config.hydra.sweep.dir), True, config.get("logger"))

    @staticmethod
    def _write(sweep: Path, with_figures: bool, logger: DictConfig | None) -> None:
        from adalfl.sweep import report

        try:
            built = report.write(sweep, with_figures=with_figures, logger=logger)
            if with_figures:
                log.info("sweep report: %s\n%s", sweep / "results.md", report.markdown(built))
        except Exception as err:  # noqa: BLE001
            log.warning("could not write the sweep report in %s: %s: %s", sweep, type(err).__name__, err)


class OutputDirCheck(Callback):
    """Refuses, in one line, an output folder that cannot be written, before Hydra's own set-up
    fails there with a traceback (the cause buried in its middle). Runs before Hydra creates the
    folder: ``hydra.run.dir`` for a single job, ``hydra.sweep.dir`` for a sweep."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(str(config.hydra.sweep.dir), "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            reason = err.strerror or type(err).__name__
            where = f" ({err.filename})" if err.filename and str(err.filename) != folder else ""
            print(
                f"error: cannot write the output folder {folder}: {reason}{where}; choose another with {key}=...",
                file=sys.stderr,
            )
            sys.exit(1)
