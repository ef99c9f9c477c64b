"""User mistakes become one line naming the key and the allowed values, before any compute where the
value alone decides (before the data is loaded); W&B's start-up waits only logger.init_timeout. A bug
is not a mistake of the user's: it keeps its traceback."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from adalfl import app
from adalfl.app import run
from adalfl.config import ConfigError
from adalfl.methods.learned_loss import LossNetConfig

from helpers import REPO, compose_config, tiny
from mainproc import run_main

FAST = ("model.widths=[32,32]", "runtime.threads=1", "dataset.steps=20")


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading data means the value was not checked before compute."""

    def refuse(*args, **kwargs):
        raise AssertionError("data loaded before the config was checked")

    monkeypatch.setattr(app, "load_data", refuse)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["runtime.device=tpu"], "runtime.device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["optimizer.momentum=2"], r"optimizer.momentum must be in \[0, 1\), got 2.0"),
        (["optimizer.dampening=1.5"], r"optimizer.dampening must be in \[0, 1\], got 1.5"),
        (["method=adalfl", "method.loss.hidden=[]"], r"method.loss.hidden must list at least one positive layer width"),
        (["method=adalfl", "method.loss.beta=0"], r"method.loss.beta must be > 0"),
        (["method=taylorglo", "method.cmaes.sigma=0"], r"method.cmaes needs population >= 2"),
        (["method=adalfl", "method.dead_loss.patience=-1"], "method.dead_loss.grad_norm and method.dead_loss.patience"),
        (["logger.init_timeout=0"], "logger.init_timeout must be positive"),
    ],
)
def test_bad_values_are_refused_before_the_data_is_loaded(
    overrides: list[str], message: str, job_dir: Path, no_data: None
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        run(tiny(*FAST, *overrides), out_dir=job_dir)
    assert "\n" not in str(refused.value)
    assert json.loads((job_dir / "result.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (["method=adalfl", "method.loss.activation=foo"], "[smooth_leaky_relu, relu, softplus, none]"),
        (["method=ml3", "method.loss.output_activation=tanh"], "[smooth_leaky_relu, relu, softplus, none]"),
        (["method=adalfl", "method.loss.init=zeros"], "[default, xavier, kaiming_normal, normal]"),
        (["method=adalfl", "method.loss.reduction=max"], "[mean, sum]"),
        (["method=adalfl", "method.loss.regression_input=difference"], "[residual, pair]"),
        (["method=metalr", "method.meta.backend=jax"], "[func, higher]"),
        (["method=taylorglo", "method.search=random"], "[cmaes, gradient]"),
        (["method=taylorglo", "method.init=ones"], "[squared_error, zeros]"),
    ],
)
def test_a_bad_choice_is_refused_when_the_config_is_composed(overrides: list[str], allowed: str) -> None:
    """Choices are enumerations in the schema: a value outside one never reaches a job."""
    with pytest.raises(ConfigCompositionException, match=re.escape(overrides[-1])) as refused:
        compose_config(*overrides)
    cause = str(refused.value.__cause__)
    value = overrides[-1].split("=", 1)[1]
    assert f"Invalid value '{value}', expected one of {allowed}" in cause
    assert f"full_key: {overrides[-1].split('=')[0]}" in cause


def test_a_bad_choice_in_a_config_built_in_python_names_the_allowed_values() -> None:
    with pytest.raises(
        ConfigError,
        match=r"method.loss.activation must be one of "
        r"\['smooth_leaky_relu', 'relu', 'softplus', 'none'\], got 'foo'",
    ):
        LossNetConfig(activation="foo")


def test_a_bad_choice_on_the_command_line_is_one_message(tmp_path: Path) -> None:
    proc = run_main(["logger=none", "method.loss.activation=foo", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Invalid value 'foo', expected one of [smooth_leaky_relu, relu, softplus, none]" in proc.stderr
    assert "full_key: method.loss.activation" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(job_dir: Path, no_data: None) -> None:
    with pytest.raises(
        ConfigError,
        match="runtime.device=cuda: torch sees no CUDA device on this machine; use runtime.device=auto or runtime.device=cpu",
    ):
        run(tiny(*FAST, "runtime.device=cuda"), out_dir=job_dir)


def test_a_batch_larger_than_the_training_split_is_refused(job_dir: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"dataset.batch_size=100000 is larger than the training split of digits "
        r"\(1293 examples\); use at most 1293",
    ):
        run(tiny(*FAST, "dataset.batch_size=100000"), out_dir=job_dir)
    assert not (job_dir / "metrics.jsonl").exists()


def test_wandb_start_up_waits_only_the_configured_time(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    settings = []

    def fake_init(**kwargs):
        settings.append(kwargs["settings"])
        raise TimeoutError("no answer")  # what a rejected key or an unreachable server ends in

    monkeypatch.setattr(wandb, "init", fake_init)
    run(tiny(*FAST, "logger=wandb", "logger.mode=offline", "logger.init_timeout=3"), out_dir=job_dir)
    assert settings[0].init_timeout == 3.0
    assert json.loads((job_dir / "result.json").read_text())["status"] == "done"  # W&B never costs the run
    assert tiny("logger=wandb").logger.init_timeout == 15  # the default: seconds, not W&B's 90


@pytest.mark.parametrize(
    ("arg", "line"),
    [
        ("threads=1", "error: threads is now runtime.threads: write runtime.threads=1"),
        ("+device=cpu", "error: device is now runtime.device: write runtime.device=cpu"),  # `+` would add an unused key
        ("~progress", "error: progress is now runtime.progress"),
    ],
)
def test_a_run_time_switch_by_its_old_root_name_names_its_new_key(arg: str, line: str, tmp_path: Path) -> None:
    proc = run_main(["method=ce", "logger=none", arg], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line]
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made a job folder


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_that_cannot_be_written_is_one_line(key: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["-m"] if key == "hydra.sweep.dir" else []
    proc = run_main([*args, "method=ce", "logger=none", f"{key}={blocker}/job"], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot write the output folder {blocker}/job: Not a directory; choose another with {key}=..."
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model._target_=adalfl.models.simple.NoSuchModel"],
            "model._target_: there is no adalfl.models.simple.NoSuchModel",
        ),
        (
            ["model._target_=adalfl.models.no_such_module.MLP"],
            "model._target_: there is no adalfl.models.no_such_module.MLP",
        ),
        (
            ["+model.depth=3"],
            "model: adalfl.models.simple.MLP does not take these keys: got an unexpected keyword argument 'depth'",
        ),
        (["model.widths=[0]"], r"model.widths must be positive, got \[0\]"),  # the model's own check
    ],
)
def test_a_model_the_config_cannot_build_is_one_line(overrides: list[str], message: str, job_dir: Path) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        run(tiny(*FAST, *overrides), out_dir=job_dir)
    assert "\n" not in str(refused.value)


# A model with a bug in its __init__, not in the config: it accepts every key of conf/model/mlp.yaml.
BROKEN_MODEL = """
from torch import nn


class Broken(nn.Module):
    def __init__(self, input_shape, num_outputs, widths=(), activation="relu", batch_norm=False, init="xavier"):
        super().__init__()
        self.scale = 1 / 0
"""


def test_a_bug_in_a_model_keeps_its_traceback(tmp_path: Path, job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_model.py").write_text(BROKEN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ZeroDivisionError):
        run(tiny(*FAST, "model._target_=broken_model.Broken"), out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "failed" and result["error"] == "ZeroDivisionError: division by zero"
    assert "self.scale = 1 / 0" in result["traceback"]
    # As a user runs it: Hydra prints the traceback, main.py does not turn it into "error: ..."
    proc = run_main(
        ["logger=none", "runtime.threads=1", "dataset.steps=20", "model._target_=broken_model.Broken"],
        cwd=tmp_path,
        extra_env={"PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{tmp_path}"},
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert 'broken_model.py", line 8, in __init__' in proc.stderr
    assert "ZeroDivisionError: division by zero" in proc.stderr
    assert not any(line.startswith("error:") for line in proc.stderr.splitlines())
