"""Test-session set-up and shared fixtures. Plain helpers are imported from helpers.py (configs) and
mainproc.py (running main.py in a child process), never from this file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import helpers  # noqa: F401 - registers the config schemas and resolvers, as main.py does
import pytest
import torch

# W&B stages the tables a run logs in its data folder (~/.local/share/wandb) until `wandb sync`:
# keep the tests' offline runs out of the user's.
os.environ.setdefault("WANDB_DATA_DIR", tempfile.mkdtemp(prefix="adalfl-tests-wandb-"))
# The tests' models are tiny: one thread is faster, and immune to a busy second core.
torch.set_num_threads(1)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    path = tmp_path / "job"
    path.mkdir()
    return path
