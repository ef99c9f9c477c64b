"""Progress lines: a job without a terminal shows life in its log during every long phase."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from adalfl.app import run
from adalfl.track import progress as progress_module
from adalfl.track.progress import ProgressLog, format_duration

from helpers import tiny


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def test_one_line_per_interval_with_step_value_elapsed_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    reads = []

    def meta_loss() -> float:  # read only when a line is written (a GPU value would sync)
        reads.append(clock.now)
        return 0.5

    ticker = ProgressLog(
        logging.getLogger("adalfl"), "job", "offline meta step", total=100, interval_s=20.0, clock=clock
    )
    with caplog.at_level(logging.INFO, logger="adalfl"):
        for step in range(1, 101):
            clock.now = step * 1.0  # one second per step
            ticker.update(step, meta_objective=meta_loss)
    lines = _lines(caplog, "offline meta step")
    # t = 20, 40, 60, 80 and the last step (t = 100, which is also an interval)
    assert len(lines) == 5 and len(reads) == 5
    assert lines[0] == "[job] offline meta step 20/100 (20%): meta objective 0.5, 20 s elapsed, about 80 s left"
    assert lines[-1] == "[job] offline meta step 100/100 (100%): meta objective 0.5, 1.7 min elapsed, done"


def test_time_left_counts_only_this_run_s_steps_and_disabled_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="adalfl"):
        resumed = ProgressLog(
            logging.getLogger("adalfl"), "job", "training step", total=1000, start=900, interval_s=10.0, clock=clock
        )
        clock.now = 10.0
        resumed.update(950, base_loss=torch.tensor(2.0))  # 50 steps in 10 s: 50 left take 10 s more
        silent = ProgressLog(logging.getLogger("adalfl"), "job", "training step", total=10, enabled=False, clock=clock)
        silent.update(10, base_loss=1.0)
    assert _lines(caplog, "training step") == [
        "[job] training step 950/1000 (95%): base loss 2, 10 s elapsed, about 10 s left"
    ]


def test_numbers_are_kept_for_later_lines_and_tensors_are_not(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    ticker = ProgressLog(logging.getLogger("adalfl"), "job", "CMA-ES generation", total=10, interval_s=0.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="adalfl"):
        ticker.update(1, best_so_far=0.25, meta_loss=torch.tensor(3.0, requires_grad=True) * 2)
        ticker.update(1.5)  # inside generation 2: no values of its own
    first, second = _lines(caplog, "CMA-ES generation")
    assert "best so far 0.25, meta loss 6" in first
    assert "best so far 0.25" in second and "meta loss" not in second
    assert ticker.kept == {"best_so_far": 0.25}


def test_durations_read_in_seconds_minutes_or_hours() -> None:
    assert [format_duration(s) for s in (4.2, 99, 150, 7199, 7200, 90000)] == [
        "4 s",
        "99 s",
        "2.5 min",
        "120.0 min",
        "2.00 h",
        "25.00 h",
    ]


def test_job_without_a_terminal_logs_every_phase(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under pytest stderr is no terminal: the offline meta steps and the training steps are logged
    (interval 0 here: a line per step, so the test need not wait)."""
    monkeypatch.setattr(progress_module, "INTERVAL_S", 0.0)
    with caplog.at_level(logging.INFO, logger="adalfl"):
        run(tiny("method=ml3", "offline.ml3_steps=6", "dataset.steps=10"), out_dir=job_dir)
    offline = _lines(caplog, "offline meta step")
    assert [int(re.search(r"step (\d+)/6", line).group(1)) for line in offline] == list(range(1, 7))
    assert all(re.search(r"meta objective [\d.]+, \d+ s elapsed, (about \d+ s left|done)$", line) for line in offline)
    assert len(_lines(caplog, "training step")) == 10


def test_cmaes_search_logs_its_generations(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress_module, "INTERVAL_S", 0.0)
    with caplog.at_level(logging.INFO, logger="adalfl"):
        run(
            tiny(
                "method=taylorglo",
                "offline.population=3",
                "offline.generations=2",
                "offline.partial_steps=3",
                "dataset.steps=5",
            ),
            out_dir=job_dir,
        )
    lines = _lines(caplog, "CMA-ES generation")
    # one before each candidate's partial training (x0, then 3 per generation), so a long generation
    # shows life too, and one at the end of each generation (x0 is generation 0)
    assert len(lines) == (1 + 3 * 2) + 3
    generations = [int(line.split("CMA-ES generation ")[1].split("/")[0]) for line in lines]
    assert generations == sorted(generations) and set(generations) == {0, 1, 2}
    assert "best so far" not in lines[0]  # nothing trained yet
    assert all("best fitness" in line and "best so far" in line for line in lines[1:])  # the last generation's
    assert lines[-1].split("CMA-ES generation ")[1].startswith("2/2 (100%)") and lines[-1].endswith("done")
    assert all(line.endswith("left") for line in lines[:-1])


def test_training_lines_give_way_to_the_progress_bar_on_a_terminal(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress_module, "INTERVAL_S", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    cfg = tiny("dataset.steps=10")
    cfg.runtime.progress = True
    with caplog.at_level(logging.INFO, logger="adalfl"):
        run(cfg, out_dir=job_dir)
    assert _lines(caplog, "training step") == []
