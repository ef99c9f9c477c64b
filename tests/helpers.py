"""Plain helpers the tests import (``from helpers import tiny``): the repository's paths, the test
device, and the job config exactly as main.py composes it. Fixtures live in conftest.py; running
main.py in a child process, in mainproc.py."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from adalfl.configstore import register_configs
from adalfl.sweep.resolvers import register_resolvers

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The meta-gradient and tangent-pass tests also run on a GPU: ADALFL_TEST_DEVICE=cuda pytest tests/test_meta.py
TEST_DEVICE = torch.device(os.environ.get("ADALFL_TEST_DEVICE", "cpu"))

register_configs()  # as main.py does at start-up (both are safe to call again)
register_resolvers()


def compose_config(*overrides: str) -> DictConfig:
    """The job config exactly as `python main.py <overrides>` composes it (no hydra node)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def tiny(*overrides: str) -> DictConfig:
    """A fast, offline job config: few steps, no W&B, no progress bar; `method=ce` unless given."""
    method = [] if any(o.startswith("method=") for o in overrides) else ["method=ce"]
    cfg = compose_config(
        "logger=none", "dataset.steps=40", "dataset.eval_interval=20", "dataset.log_interval=5", *method, *overrides
    )
    with open_dict(cfg):
        cfg.runtime.progress = False
    return cfg
