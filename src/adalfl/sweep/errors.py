"""How a failed job of a sweep reports itself.

Hydra's launchers record a job's exception and go on with the other jobs; once the batch is done,
the sweeper re-raises the *first* failed job's exception and Hydra prints its traceback. That shows
a user mistake (missing data, a bad value) as a long chained traceback, and hides every later
failure, including a genuine bug's traceback behind an earlier one-line mistake. So each job reports
its own failure where it happens (one line for a user error, the traceback for anything else),
then raises :class:`SweepJobFailed`, which Hydra prints in one line (it is a
``CompactHydraException``) and which still makes the sweep exit non-zero.

The report happens inside the job's process: on the terminal for the basic and joblib launchers,
in ``<sweep>/.submitit/<job id>/*.err`` for submitit; ``results.md`` lists every failed job either way.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path
from typing import TextIO

from hydra.errors import CompactHydraException


class SweepJobFailed(CompactHydraException):
    """Raised by a sweep job after it has reported its own failure.

    Its message is what Hydra prints last, under its own "Error executing job with overrides" line,
    so it points to the reports above and to the sweep's table rather than repeating one of them.
    """

    def __init__(self, sweep_dir: str) -> None:
        # A single string argument: the exception is pickled back from joblib and submitit workers.
        super().__init__(sweep_dir)
        self.sweep_dir = sweep_dir

    def __str__(self) -> str:
        return (
            "this and every other failed job of the sweep reported its error when it failed (one line, "
            f"or the traceback of an unexpected error); {Path(self.sweep_dir) / 'results.md'} lists them all"
        )


def describe_job(job_num: int, overrides: list[str]) -> str:
    """``job #1 (dataset=cifar10 seed=0)``: the overrides quoted as a shell would need them, so the
    job can be rerun alone by pasting them after ``python main.py``."""
    return f"job #{job_num} ({shlex.join(overrides)})"


def report_job_error(
    err: BaseException, job_num: int, overrides: list[str], user_error: bool, stream: TextIO | None = None
) -> None:
    """Write one line for a user error, or a header line and the traceback for anything else.

    Call it from the ``except`` block that caught ``err``, so the traceback is the one being handled.
    """
    stream = stream or sys.stderr
    if user_error:
        print(f"error: {describe_job(job_num, overrides)}: {err}", file=stream, flush=True)
        return
    print(f"error: {describe_job(job_num, overrides)} failed with an unexpected error:", file=stream)
    traceback.print_exception(err, file=stream)
    stream.flush()
