"""Progress lines in the job's log, for phases that would otherwise be silent.

An offline phase (thousands of meta steps, or a CMA-ES search of hours) logs nothing else until it
ends, and the training phase's progress bar is only drawn on a terminal: in a Slurm log or a
``nohup`` run such a job looks hung. ``ProgressLog`` writes one line at most every ``interval_s``
seconds (and one at the end) with the step, the phase's objective, the time elapsed and an estimate
of the time left, so a log shows life at least once a minute and only a few lines a minute. Each
loop calls ``update`` once per step; between lines that costs one clock read.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Union

import torch

# Seconds between two lines: at least once a minute, at most a few lines a minute.
INTERVAL_S = 20.0

Value = Union[float, torch.Tensor, Callable[[], Union[float, torch.Tensor]], None]


def format_duration(seconds: float) -> str:
    """Seconds, minutes or hours, whichever reads best: '42 s', '3.5 min', '2.25 h'."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _number(value: Value) -> float | None:
    if value is None:
        return None
    if callable(value):
        value = value()
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class ProgressLog:
    """Logs ``<title> <phase> <step>/<total> (<pct>%): <name> <value>, <elapsed> elapsed, about <eta> left``.

    Values may be tensors or callables: they are read only when a line is written, so a GPU loop is
    not synchronised on every step. Plain numbers are also kept for later lines that do not give
    them (a CMA-ES line inside a generation shows the last generation's fitness); tensors are not,
    so no step's autograd graph outlives its step. ``enabled=False`` makes ``update`` a no-op (e.g.
    while a progress bar shows the same on a terminal).
    """

    def __init__(
        self,
        log: logging.Logger,
        title: str,
        phase: str,
        total: int,
        start: int = 0,
        interval_s: float | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.log, self.title, self.phase = log, title, phase
        self.total, self.start, self.enabled = int(total), int(start), enabled
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        self.clock = clock
        self.started = self.last = clock()
        self.kept: dict[str, float] = {}

    def update(self, step: float, **values: Value) -> None:
        """Called once per step; writes a line when ``interval_s`` has passed, and at the last step.
        A fractional step (part of a CMA-ES generation) counts towards the estimate of the time left."""
        if not self.enabled:
            return
        self.kept.update({name: value for name, value in values.items() if isinstance(value, (int, float))})
        now = self.clock()
        if now - self.last < self.interval_s and step < self.total:
            return
        self.last = now
        elapsed = now - self.started
        done = step - self.start
        left = elapsed / done * (self.total - step) if done > 0 else math.inf
        parts = [
            f"{name.replace('_', ' ')} {number:.4g}"
            for name, value in {**self.kept, **values}.items()
            if (number := _number(value)) is not None
        ]
        parts += [
            f"{format_duration(elapsed)} elapsed",
            f"about {format_duration(left)} left" if step < self.total else "done",
        ]
        percent = 100 * step / self.total if self.total else 100.0
        self.log.info("[%s] %s %d/%d (%.0f%%): %s", self.title, self.phase, step, self.total, percent, ", ".join(parts))
