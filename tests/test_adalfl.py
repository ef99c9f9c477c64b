"""AdaLFL end to end through the real training loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adalfl.app import build_job, run
from adalfl.losses.learned import SmoothLeakyReLU
from adalfl.methods.learned_loss import LossNetConfig
from adalfl.methods.adalfl import AdaLFL, AdaLFLConfig
from adalfl.methods.metalearning import OnlineMetaConfig
from adalfl.methods.base import FixedLossMethod
from adalfl.track.metrics import Tracker
from adalfl.train.loop import NonFiniteLossError, fit

from helpers import tiny


def _records(job_dir: Path, phase: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if phase is None or row["phase"] == phase]


def test_adalfl_job_leaves_learned_loss_plots_and_phi(job_dir: Path) -> None:
    run(tiny("method=adalfl", "method.meta.init_steps=20", "method.plot_every=20"), out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "done" and result["method"] == "adalfl"
    assert result["wall_time_s"]["offline"] > 0
    for name in ("learned_loss.pt", "learned_loss_start.pt", "learned_loss_evolution.png"):
        assert (job_dir / name).stat().st_size > 0, name
    assert sorted(p.name for p in (job_dir / "learned_loss").glob("*.png")) == [
        "step_0000000.png",
        "step_0000020.png",
        "step_0000040.png",
    ]
    start = torch.load(job_dir / "learned_loss_start.pt")
    end = torch.load(job_dir / "learned_loss.pt")
    assert any(not torch.equal(start[k], end[k]) for k in start)  # phi adapted online
    records = _records(job_dir)
    offline = [r for r in records if r["phase"] == "offline"]
    assert [r["step"] for r in offline] == [5, 10, 15, 20]
    train = [r for r in records if r["phase"] == "train"]
    assert all({"train/base_grad_norm", "meta/val_task_loss", "meta/grad_norm"} <= r.keys() for r in train)
    assert all(r["meta/skipped_steps"] == 0 for r in train)
    # the learned loss's health at the start and at every evaluation, the last one in result.json
    health = [r for r in records if r["phase"] == "loss"]
    assert [r["step"] for r in health] == [0, 20, 40]
    assert {"loss/scale", "loss/flat_t0", "loss/flat_t1", "loss/free_wrong", "loss/free_miss"} <= health[-1].keys()
    assert result["loss_health"] == {k.split("/", 1)[1]: v for k, v in health[-1].items() if k.startswith("loss/")}


class FrozenLoss(FixedLossMethod):
    """Plain torch.optim.SGD training with a fixed copy of a loss network."""

    def __init__(self, state: dict) -> None:
        super().__init__("frozen")
        self.state = state

    def setup(self, job, model) -> None:
        self.loss = LossNetConfig().build(job.task, job.device)  # the schema's defaults: conf/method/adalfl.yaml's
        self.loss.load_state_dict(self.state)

    def base_loss(self, job, output, target):
        return self.loss(output, target)


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_adalfl_with_zero_meta_lr_equals_plain_sgd_with_the_frozen_loss(backend: str, tmp_path: Path) -> None:
    overrides = (
        "model.batch_norm=true",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "optimizer.weight_decay=5e-4",
        "dataset.milestones=[15,30]",
        "dataset.lr_gamma=0.2",
        "dataset.log_interval=1",
        "checkpoint.every=0",
    )
    cfg = tiny(
        "method=adalfl",
        "method.meta.init_steps=0",
        "method.meta.online_lr=0.0",
        f"method.meta.backend={backend}",
        *overrides,
    )
    run(cfg, out_dir=tmp_path / "adalfl")
    phi = torch.load(tmp_path / "adalfl" / "learned_loss_start.pt")

    ref_cfg = tiny(*overrides)
    out = tmp_path / "sgd"
    out.mkdir()
    job, model = build_job(ref_cfg, out, torch.device("cpu"), Tracker(out))
    fit(job, model, FrozenLoss(phi))
    job.tracker.close()

    adalfl, sgd = _records(tmp_path / "adalfl", "train"), _records(out, "train")
    assert len(adalfl) == len(sgd) == 40
    for a, b in zip(adalfl, sgd):
        assert a["step"] == b["step"] and a["train/lr"] == b["train/lr"]
        assert a["train/base_loss"] == pytest.approx(b["train/base_loss"], rel=1e-5, abs=1e-7)
    assert adalfl[-1]["test/error_rate"] == sgd[-1]["test/error_rate"]
    assert sorted({r["train/lr"] for r in sgd}) == pytest.approx([0.0004, 0.002, 0.01])


def test_non_finite_meta_gradient_skips_the_meta_step_only(job_dir: Path) -> None:
    # phi never leaves its random draw here: a small model and lr keep its base steps finite
    cfg = tiny(
        "dataset=diabetes",
        "method=adalfl",
        "method.meta.init_steps=0",
        "checkpoint.every=0",
        "model.widths=[32,32]",
        "optimizer.lr=0.001",
    )
    job, model = build_job(cfg, job_dir, torch.device("cpu"), Tracker(job_dir))
    job.data.val.y[:] = float("nan")  # every meta loss, hence every meta-gradient, is NaN
    method = AdaLFL(AdaLFLConfig(meta=OnlineMetaConfig(init_steps=0)))
    before = [p.detach().clone() for p in model.parameters()]
    fit(job, model, method)
    job.tracker.close()
    assert method.online is not None and method.online.skipped == 40
    assert all(torch.isfinite(p).all() for p in method.loss.parameters())
    start = torch.load(job_dir / "learned_loss_start.pt")
    assert all(torch.equal(start[k], v) for k, v in method.loss.state_dict().items())  # phi untouched
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # base steps happened
    last = [r for r in _records(job_dir) if "meta/skipped_steps" in r][-1]
    assert last["meta/skipped_steps"] == 40 and last["train/base_loss"] is not None


def test_non_finite_base_loss_fails_the_job(job_dir: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="base loss became"):
        run(tiny("dataset=diabetes", "method=adalfl", "method.meta.init_steps=0", "optimizer.lr=1e30"), out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "failed" and "NonFiniteLossError" in result["error"]


def test_adalfl_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    args = ("method=adalfl", "method.meta.init_steps=10", "checkpoint.every=20")
    run(tiny(*args), out_dir=tmp_path / "straight")
    original, calls = AdaLFL.train_step, {"n": 0}

    def dies_at_step_25(self, job, model, optimizer):
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("killed")
        return original(self, job, model, optimizer)

    with pytest.MonkeyPatch.context() as patch:  # dies after its step-20 checkpoint (same config: it resumes)
        patch.setattr(AdaLFL, "train_step", dies_at_step_25)
        with pytest.raises(RuntimeError, match="killed"):
            run(tiny(*args), out_dir=tmp_path / "resumed")
    run(tiny(*args), out_dir=tmp_path / "resumed")
    assert _records(tmp_path / "straight") == _records(tmp_path / "resumed")


def test_invalid_method_values_are_refused(job_dir: Path) -> None:
    from hydra.errors import ConfigCompositionException

    from adalfl.config import ConfigError

    with pytest.raises(ConfigError, match="init_steps"):
        run(tiny("method=adalfl", "method.meta.init_steps=-1"), out_dir=job_dir)
    with pytest.raises(ConfigCompositionException):  # a choice: refused when the config is composed
        tiny("method=adalfl", "method.meta.backend=jax")


@pytest.mark.parametrize(("beta", "gamma"), [(10.0, 0.01), (1.0, 0.0), (3.0, 0.5)])
def test_smooth_leaky_relu_is_the_papers_formula_with_exact_second_derivatives(beta: float, gamma: float) -> None:
    """The hand-written derivative must be right to second order: the meta-gradient uses both."""
    x = torch.linspace(-60, 60, 241, dtype=torch.float64) / beta
    act = SmoothLeakyReLU(beta, gamma)
    formula = torch.nn.functional.softplus(x, beta=beta, threshold=1e9) * (1 - gamma) + gamma * x
    torch.testing.assert_close(act(x), formula, rtol=1e-12, atol=1e-12)
    probe = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(act, (probe,))
    assert torch.autograd.gradgradcheck(act, (probe,))


@pytest.mark.parametrize("method", ["adalfl", "ml3"])
def test_loss_network_yaml_and_schema_defaults_agree(method: str) -> None:
    """conf/method/<method>.yaml and the schema's defaults describe the same network (a default
    changed in one place only would make a job and a test build different losses)."""
    # (every field of every method: tests/test_config.py::test_the_method_yaml_holds_the_dataclass_defaults)
    from dataclasses import asdict, fields

    from adalfl.methods import adalfl as adalfl_module, ml3 as ml3_module

    schema = {"adalfl": adalfl_module.AdaLFLConfig, "ml3": ml3_module.ML3Config}[method]
    loss = next(f for f in fields(schema) if f.name == "loss").default_factory()  # type: ignore[misc]
    composed = tiny(f"method={method}").method.loss
    assert dict(composed) == asdict(loss)
