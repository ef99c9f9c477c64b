"""Every config group composes and builds; bad input fails at start-up with the key named."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from adalfl.app import _build_model, _build_optimizer, build_method, run
from adalfl.config import ConfigError, OfflineConfig, validate
from adalfl.core import Method
from adalfl.data import load_data
from adalfl.losses.learned import OutputWiseLoss, PointwiseNetwork
from adalfl.methods.learned_loss import LossNetConfig

from helpers import CONF, compose_config, tiny
from mainproc import run_main


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("dataset", _options("dataset"))
def test_every_dataset_config_composes_and_validates(dataset: str) -> None:
    cfg = compose_config(f"dataset={dataset}")
    validate(cfg)
    assert cfg.dataset.name == dataset
    assert cfg.optimizer.lr == cfg.dataset.lr  # the optimizer takes the dataset's protocol


@pytest.mark.parametrize("model", ["linear", "mlp"])  # image models: tests/test_models.py
def test_tabular_model_configs_build_for_the_default_dataset(model: str) -> None:
    cfg = compose_config(f"model={model}")
    net = _build_model(cfg, torch.device("cpu"))
    out = net(torch.randn(3, *cfg.dataset.input_shape))
    assert out.shape == (3, cfg.dataset.num_outputs)


def _schema(method: str) -> type:
    return importlib.import_module(f"adalfl.methods.{method}").CONFIG_SCHEMA


@pytest.mark.parametrize("method", _options("method"))
def test_every_method_is_built_from_its_typed_config(method: str) -> None:
    cfg = compose_config(f"method={method}")
    obj = build_method(cfg)
    assert isinstance(obj, Method)
    assert obj.name == method
    assert type(obj.config) is _schema(method)  # the dataclass itself, its __post_init__ checks run


REQUIRED = "<no default: the YAML sets it>"


def _defaults(schema: Any) -> dict:
    """A config dataclass's (or instance's) values, nested as the YAML is; REQUIRED where it has none."""
    hints = typing.get_type_hints(schema if isinstance(schema, type) else type(schema))
    out = {}
    for f in dataclasses.fields(schema):
        if not isinstance(schema, type):
            value = getattr(schema, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:  # a nested config without a default still has defaults of its own
            value = hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else REQUIRED
        out[f.name] = _defaults(value) if dataclasses.is_dataclass(value) else value
    return out


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _leaves(child, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


@pytest.mark.parametrize("method", _options("method"))
def test_the_method_yaml_holds_the_dataclass_defaults(method: str) -> None:
    """Defaults are written once, in the dataclass; conf/method/<name>.yaml repeats them with their
    sources and must not differ. A field without a default (an offline budget) is set by the YAML
    from the root offline node, whose defaults are OfflineConfig's."""
    defaults = _leaves(_defaults(_schema(method)))
    composed = _leaves(OmegaConf.to_container(compose_config(f"method={method}").method, resolve=False))
    assert set(composed) == set(defaults)
    offline = {f.name for f in dataclasses.fields(OfflineConfig)}
    for key, value in composed.items():
        if defaults[key] == REQUIRED:
            match = re.fullmatch(r"\$\{offline\.(\w+)\}", str(value))
            assert match and match.group(1) in offline, f"method.{key}: {value!r} is not an offline.* default"
        else:
            assert value == defaults[key] and type(value) is type(defaults[key]), (
                f"method.{key}: the YAML says {value!r}, the dataclass {defaults[key]!r}"
            )


def test_the_method_yamls_only_hold_fields_the_dataclass_defines() -> None:
    for method in _options("method"):
        yaml = OmegaConf.to_container(OmegaConf.load(CONF / "method" / f"{method}.yaml"))
        yaml.pop("defaults")
        assert set(_leaves(yaml)) <= set(_leaves(_defaults(_schema(method)))), method


def test_the_loss_network_has_no_defaults_of_its_own() -> None:
    """PointwiseNetwork and OutputWiseLoss take every value from LossNetConfig (or their caller), so
    no second copy of a default can drift from the config's."""
    parameters = inspect.signature(PointwiseNetwork).parameters
    assert all(p.default is inspect.Parameter.empty for p in parameters.values())
    assert set(parameters) - {"inputs"} <= {f.name for f in dataclasses.fields(LossNetConfig)}
    with pytest.raises(TypeError):
        PointwiseNetwork(hidden=[4])  # type: ignore[call-arg]
    reduced = inspect.signature(OutputWiseLoss).parameters
    assert all(p.default is inspect.Parameter.empty for p in reduced.values())


@pytest.mark.parametrize("logger", _options("logger"))
def test_every_logger_config_composes(logger: str) -> None:
    cfg = compose_config(f"logger={logger}")
    validate(cfg)


def test_optimizer_and_schedule_follow_the_config() -> None:
    cfg = compose_config(
        "optimizer.lr=0.2",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "optimizer.weight_decay=0.01",
        "dataset.milestones=[2,4]",
        "dataset.lr_gamma=0.5",
    )
    net = torch.nn.Linear(2, 1)
    opt, sched = _build_optimizer(cfg, list(net.parameters()))
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.2, 0.9, True, 0.01)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05])


def test_unknown_key_is_rejected_with_its_name() -> None:
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_config("optimizer.lrr=0.1")
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        compose_config("not_a_key=1")


def test_wrong_type_is_rejected_with_its_name() -> None:
    with pytest.raises(ConfigCompositionException, match="optimizer.lr"):
        compose_config("optimizer.lr=abc")
    with pytest.raises(ConfigCompositionException, match="dataset.steps"):
        compose_config("dataset.steps=1.5x")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("dataset.steps=0", "dataset.steps"),
        ("dataset.batch_size=-4", "dataset.batch_size"),
        ("logger.mode=sometimes", "logger.mode"),
        ("optimizer.nesterov=true", "optimizer.nesterov"),
        ("runtime.cpu_memory=keep", "cpu_memory"),
    ],
)
def test_unusable_values_are_refused_before_compute(override: str, key: str, job_dir: Path) -> None:
    cfg = tiny(override)
    with pytest.raises(ConfigError, match=key):
        run(cfg, out_dir=job_dir)
    import json

    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "failed"
    assert key in result["error"]
    assert not (job_dir / "metrics.jsonl").exists()  # refused before any training


def test_cli_reports_bad_values_in_one_line(tmp_path: Path) -> None:
    proc = run_main(["optimizer.lr=-1", "logger=none", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "optimizer.lr must be positive, got -1.0" in proc.stderr
    assert "Traceback" not in proc.stderr  # a user mistake gets one line, not a stack trace
    proc = run_main(["optimizer.lrr=1", "logger=none"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "optimizer.lrr" in proc.stderr


def test_data_is_loaded_as_device_tensors() -> None:
    cfg = compose_config()
    data = load_data(cfg.dataset, torch.device("cpu"))
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.long


def test_help_shows_the_app_and_its_real_options_only(tmp_path: Path) -> None:
    proc = run_main(["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("AdaLFL reproducibility suite")
    assert "python main.py -m dataset=diabetes,digits" in out and "README.md" in out
    options = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith(("dataset: ", "method: ")))
    assert "digits" in options["dataset"].split(", ")
    assert "adalfl" in options["method"].split(", ")
    assert "_schema" not in out  # schemas are no options (adalfl.configstore)
    assert "runtime:" in out and "\nthreads:" not in out
