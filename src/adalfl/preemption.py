"""Stop signals from a scheduler take effect at a step boundary, after a checkpoint.

Slurm warns a job before its time limit or on preemption. Under submitit that warning is SIGUSR2
(``SUBMITIT_PREEMPT_SIGNAL`` changes it), whose handler requeues the job and exits at once, in the
middle of whatever step is running; a plain ``sbatch`` job gets SIGTERM, which kills it. Either
way the work since the last periodic checkpoint would be lost. Here the signal is only noted; the
training loop saves a checkpoint at the end of the current step and then lets the original
handler run (submitit requeues; SIGTERM terminates). The requeued job resumes in the same folder
with nothing lost.

Offline phases have boundaries of their own (``JobContext.offline_boundary``: after each meta step, after
each CMA-ES candidate, and inside a candidate's partial training through ``StopRequested``), so a
job checkpoints within seconds of the signal in any phase. Should no boundary come within
``grace_s`` seconds, the original handler runs anyway, as if this module were absent.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Raised inside a long unit of work that can simply be redone (a CMA-ES candidate's partial
    training) so that the stop signal is not kept waiting; caught where the work is resumable."""


def check() -> None:
    """Raise StopRequested if a stop signal waits."""
    if _pending:
        raise StopRequested()


_pending: list[tuple[int, Any]] = []  # (signal number, handler to run), in arrival order
_installed: dict[int, Any] = {}  # signal number -> handler we replaced


def _stop_signals() -> list[int]:
    """The signals to defer: the scheduler's warning signal, and SIGTERM."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signals: list[int] = [signal.SIGTERM]
    warning = getattr(signal, name, None)
    if warning is not None and warning not in signals:
        signals.append(warning)
    return signals


def _note(signum: int, frame: FrameType | None) -> None:
    del frame
    if any(pending == signum for pending, _ in _pending):
        return
    original = _installed.get(signum, signal.SIG_DFL)
    _pending.append((signum, original))
    log.warning(
        "received %s: the job stops after the current step, once a checkpoint is written",
        signal.Signals(signum).name,
    )
    if hasattr(signal, "setitimer") and _grace_s[0] > 0:
        signal.setitimer(signal.ITIMER_REAL, _grace_s[0])


def _grace_expired(signum: int, frame: FrameType | None) -> None:
    del signum
    log.warning("no step boundary within %.0f s of the stop signal: stopping without a checkpoint", _grace_s[0])
    _deliver(frame, checkpointed=False)


_grace_s = [60.0]


def requested() -> bool:
    """Whether a stop signal is waiting for the current step to finish (the loop then checkpoints)."""
    return bool(_pending)


def deliver(checkpointed: bool = True) -> None:
    """Run the handlers of the signals that arrived (after the loop's checkpoint; ``checkpointed``
    False when checkpoints are off). Does not return when one of them ends the process, which is
    the usual case."""
    if _pending:
        _deliver(None, checkpointed)


def _deliver(frame: FrameType | None, checkpointed: bool) -> None:
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    while _pending:
        signum, original = _pending.pop(0)
        done = "checkpoint written" if checkpointed else "no checkpoint written"
        log.warning("%s; handing %s to its handler", done, signal.Signals(signum).name)
        if callable(original):
            original(signum, frame)
        elif original == signal.SIG_DFL:
            # The default action is to terminate: do so, but through SystemExit, so the job still
            # records "interrupted" in result.json and closes its W&B run. Exit status as if killed.
            raise SystemExit(128 + signum)


@contextmanager
def deferred_stop_signals(grace_s: float = 60.0) -> Iterator[None]:
    """Defer stop signals to step boundaries for the duration of the block.

    Only the main thread can own signal handlers; elsewhere (or for a signal set to be ignored)
    nothing changes. The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _grace_s[0] = grace_s
    previous_alarm = signal.signal(signal.SIGALRM, _grace_expired) if hasattr(signal, "SIGALRM") else None
    for signum in _stop_signals():
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN or current is None:
            continue
        _installed[signum] = current
        signal.signal(signum, _note)
    try:
        yield
    finally:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in list(_installed.items()):
            signal.signal(signum, handler)
        _installed.clear()
        _pending.clear()
        if previous_alarm is not None:
            signal.signal(signal.SIGALRM, previous_alarm)
