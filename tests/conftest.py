"""Shared test helpers: composing the real config, running main.py in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from adalfl.configstore import register_configs
from adalfl.sweep.resolvers import register_resolvers

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

register_configs()
register_resolvers()
# W&B stages the tables a run logs in its data folder (~/.local/share/wandb) until `wandb sync`:
# keep the tests' offline runs out of the user's.
os.environ.setdefault("WANDB_DATA_DIR", tempfile.mkdtemp(prefix="adalfl-tests-wandb-"))
# The tests' models are tiny: one thread is faster, and immune to a busy second core.
torch.set_num_threads(1)
# The meta-gradient and tangent-pass tests also run on a GPU: ADALFL_TEST_DEVICE=cuda pytest tests/test_meta.py
TEST_DEVICE = torch.device(os.environ.get("ADALFL_TEST_DEVICE", "cpu"))


def compose_config(*overrides: str) -> DictConfig:
    """The job config exactly as `python main.py <overrides>` composes it (no hydra node)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def tiny(*overrides: str) -> DictConfig:
    """A fast, offline job config: few steps, no W&B, no progress bar; `method=ce` unless given."""
    method = [] if any(o.startswith("method=") for o in overrides) else ["method=ce"]
    cfg = compose_config("logger=none", "dataset.steps=40", "dataset.eval_interval=20", "dataset.log_interval=5",
                         *method, *overrides)
    with open_dict(cfg):
        cfg.runtime.progress = False
    return cfg


def run_main(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python main.py ...` as a user would, with this checkout's package on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    path = tmp_path / "job"
    path.mkdir()
    return path
