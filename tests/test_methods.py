"""The comparison methods: ML3, TaylorGLO-style, meta-learned learning rate, and the smoke sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from adalfl.app import build_job, run
from adalfl.config import ConfigError
from adalfl.losses.learned import TaylorPolynomial
from adalfl.methods.learned_loss import LossNetConfig, build_loss
from adalfl.methods.metalearning import OfflineMetaConfig, OnlineMetaConfig
from adalfl.methods.metalr import MetaLR, MetaLRConfig
from adalfl.methods.ml3 import ML3, ML3Config
from adalfl.methods.taylorglo import CMAESConfig, PartialTraining, TaylorGLO, TaylorGLOConfig, cmaes_minimise
from adalfl.track.metrics import Tracker
from adalfl.train.loop import fit

from helpers import compose_config, tiny
from mainproc import run_main

# Small offline budgets that keep each job to a few seconds.
FAST = ("offline.steps=10", "offline.population=4", "offline.generations=2", "offline.partial_steps=5")


def _records(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def _job(tmp_path: Path, *overrides: str):
    cfg = tiny("checkpoint.every=0", *overrides)
    job, model = build_job(cfg, tmp_path, torch.device("cpu"), Tracker(tmp_path))
    return job, model


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["diabetes", "digits"])
@pytest.mark.parametrize("method", ["ml3", "taylorglo", "metalr"])
def test_method_end_to_end(method: str, dataset: str, job_dir: Path) -> None:
    run(tiny(f"dataset={dataset}", f"method={method}", *FAST), out_dir=job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "done" and result["method"] == method
    assert math.isfinite(result["test_metric"])
    assert result["wall_time_s"]["offline"] > 0 and result["wall_time_s"]["train"] > 0
    records = _records(job_dir)
    offline = [r for r in records if r["phase"] == "offline"]
    train = [r for r in records if r["phase"] == "train"]
    assert offline and train[-1]["step"] == 40
    if method == "metalr":
        assert (job_dir / "meta_lr.png").stat().st_size > 0 and (job_dir / "meta_lr.pt").exists()
        assert all(r["train/meta_lr"] > 0 for r in train if "train/base_loss" in r)
        assert all("offline/meta_lr" in r for r in offline)
    else:
        for name in ("learned_loss_offline.png", "learned_loss_evolution.png", "learned_loss.pt"):
            assert (job_dir / name).stat().st_size > 0, name
        offline_phi = torch.load(job_dir / "learned_loss_offline.pt")
        final_phi = torch.load(job_dir / "learned_loss.pt")
        assert all(torch.equal(offline_phi[k], final_phi[k]) for k in final_phi)  # frozen after the search
    if method == "taylorglo":
        assert [r["step"] for r in offline if "offline/cmaes_best" in r] == [0, 1, 2]


def test_taylorglo_gradient_search_runs_algorithm_1(job_dir: Path) -> None:
    run(tiny("dataset=diabetes", "method=taylorglo", "method.search=gradient", *FAST), out_dir=job_dir)
    offline = [r for r in _records(job_dir) if r["phase"] == "offline"]
    assert [r["step"] for r in offline] == [5, 10]
    assert all({"offline/meta_loss", "offline/taylor_c2"} <= r.keys() for r in offline)
    theta = torch.load(job_dir / "learned_loss.pt")["pointwise.theta"]
    assert not torch.equal(theta, torch.tensor(TaylorPolynomial.squared_error()))  # the search moved it


@pytest.mark.parametrize("method", ["ml3", "taylorglo", "metalr"])
def test_methods_resume_to_the_same_metrics(method: str, tmp_path: Path) -> None:
    args = ("dataset=diabetes", f"method={method}", *FAST, "checkpoint.every=20", "model.widths=[32,32]")
    if method == "metalr":
        args += ("method.meta.online_lr=1e-2",)  # so that the resumed meta optimiser state matters
    run(tiny(*args), out_dir=tmp_path / "straight")
    cls = {"ml3": ML3, "taylorglo": TaylorGLO, "metalr": MetaLR}[method]
    original, calls = cls.train_step, {"n": 0}

    def dies_at_step_25(self, job, model, optimizer):
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("killed")
        return original(self, job, model, optimizer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "train_step", dies_at_step_25)
        with pytest.raises(RuntimeError, match="killed"):
            run(tiny(*args), out_dir=tmp_path / "resumed")  # dies after its step-20 checkpoint
    run(tiny(*args), out_dir=tmp_path / "resumed")
    assert _records(tmp_path / "straight") == _records(tmp_path / "resumed")


def test_offline_budget_comes_from_the_shared_node_and_can_be_overridden_per_method() -> None:
    for method in ("adalfl", "metalr", "taylorglo"):
        cfg = compose_config(f"method={method}", "offline.steps=7")
        assert cfg.method.meta.init_steps == 7
    assert compose_config("method=ml3", "offline.ml3_steps=7").method.meta.init_steps == 7  # ML3: the author's 250
    cfg = compose_config("method=taylorglo", "offline.population=5", "offline.generations=3", "offline.partial_steps=9")
    assert (cfg.method.cmaes.population, cfg.method.cmaes.generations, cfg.method.cmaes.partial_steps) == (5, 3, 9)
    assert compose_config("method=ml3", "offline.steps=7", "method.meta.init_steps=3").method.meta.init_steps == 3
    assert compose_config("method=ml3").method.loss.activation == "relu"


def test_invalid_values_are_refused(job_dir: Path) -> None:
    with pytest.raises(ConfigCompositionException):  # a choice: refused when the config is composed
        tiny("method=taylorglo", "method.search=random")
    with pytest.raises(ConfigError, match="population"):
        run(tiny("method=taylorglo", "offline.population=1"), out_dir=job_dir / "b")
    with pytest.raises(ConfigError, match="init_steps"):
        run(tiny("method=ml3", "offline.ml3_steps=-1"), out_dir=job_dir / "c")
    with pytest.raises(ConfigError, match="initial_lr"):
        run(tiny("method=metalr", "method.initial_lr=0"), out_dir=job_dir / "d")


# --- ML3 -------------------------------------------------------------------------------------


def _val_loss_after_one_step(job, loss, seeds: range) -> float:
    """Algorithm 1's objective, measured exactly: L_T on the whole validation split after one SGD
    step on the whole training split, averaged over fresh initialisations."""
    total = 0.0
    for seed in seeds:
        torch.manual_seed(seed)
        model = job.build_model()
        optimizer, _ = job.build_optimizer(list(model.parameters()))
        optimizer.zero_grad()
        loss(model(job.data.train.x), job.data.train.y).backward()
        optimizer.step()
        with torch.no_grad():
            total += float(job.task.loss(model(job.data.val.x), job.data.val.y))
    return total / len(seeds)


def test_ml3_offline_training_lowers_the_validation_task_loss(tmp_path: Path) -> None:
    job, model = _job(tmp_path, "dataset=diabetes", "optimizer.lr=0.05")
    method = ML3(
        ML3Config(
            loss=LossNetConfig(activation="relu", output_activation="softplus"),
            meta=OfflineMetaConfig(init_steps=150, init_lr=1e-2),
        )
    )
    method.setup(job, model)
    torch.manual_seed(123)
    before = _val_loss_after_one_step(job, method.loss, range(100, 108))
    method.offline(job, model)
    after = _val_loss_after_one_step(job, method.loss, range(100, 108))
    plain = _val_loss_after_one_step(job, job.task.loss, range(100, 108))
    assert after < before - 0.02, (before, after, plain)
    assert all(not p.requires_grad for p in method.loss.parameters())  # frozen for the base training


# --- TaylorGLO -------------------------------------------------------------------------------


def test_taylor_polynomial_value_and_gradient_match_a_hand_computation() -> None:
    a, b, c1, c2, c3, c4, c5, c6 = 0.5, -0.25, 1.5, -2.0, 0.75, 3.0, -1.25, 0.5
    poly = TaylorPolynomial([a, b, c1, c2, c3, c4, c5, c6]).double()
    x, y = 1.25, 0.75
    u, v = x - a, y - b  # 0.75, 1.0
    value = c1 * u + c2 * u**2 + c3 * u**3 + c4 * u * v + c5 * u**2 * v + c6 * u * v**2
    assert value == pytest.approx(1.125 - 1.125 + 0.31640625 + 2.25 - 0.703125 + 0.375)
    dx = c1 + 2 * c2 * u + 3 * c3 * u**2 + c4 * v + 2 * c5 * u * v + c6 * v**2
    dtheta = [-dx, -(c4 * u + c5 * u**2 + 2 * c6 * u * v), u, u**2, u**3, u * v, u**2 * v, u * v**2]

    pair = torch.tensor([[x, y]], dtype=torch.float64, requires_grad=True)
    out = poly(pair)
    out.sum().backward()
    assert float(out.detach()) == pytest.approx(value, abs=1e-12)
    assert float(pair.grad[0, 0]) == pytest.approx(dx, abs=1e-12)
    assert poly.theta.grad.tolist() == pytest.approx(dtheta, abs=1e-12)


def test_taylor_squared_error_start_is_the_task_loss_up_to_terms_without_the_prediction() -> None:
    poly = TaylorPolynomial(TaylorPolynomial.squared_error()).double()
    pairs = torch.randn(50, 2, dtype=torch.float64)
    x, y = pairs[:, 0], pairs[:, 1]
    assert torch.allclose(poly(pairs), (x - y) ** 2 - y**2)


def test_cmaes_best_fitness_never_worsens_and_improves_on_a_toy_problem() -> None:
    target = np.array([3.0, -2.0, 1.0, 0.5])

    def fitness(x: np.ndarray) -> float:
        if x[0] > 6:
            return math.nan  # a diverged candidate
        return float(((x - target) ** 2).sum())

    gens = []
    best_x, best_f = cmaes_minimise(
        fitness, np.zeros(4), 1.0, population=8, generations=25, seed=0, on_generation=gens.append
    )
    start = float((target**2).sum())
    assert [g.index for g in gens] == list(range(26)) and gens[0].best_so_far == pytest.approx(start)
    so_far = [g.best_so_far for g in gens]
    assert all(later <= earlier for earlier, later in zip(so_far, so_far[1:]))
    assert best_f == so_far[-1] == pytest.approx(fitness(best_x))
    assert best_f < 0.01 * start
    assert all(math.isfinite(g.mean) for g in gens)


def test_cmaes_keeps_the_start_when_nothing_beats_it() -> None:
    best_x, best_f = cmaes_minimise(
        lambda x: float((x**2).sum()) if not x.any() else 1.0 + float((x**2).sum()),
        np.zeros(3),
        0.5,
        population=4,
        generations=3,
        seed=1,
    )
    assert best_f == 0.0 and not best_x.any()


def test_partial_training_is_the_same_run_for_every_candidate(tmp_path: Path) -> None:
    # lr 1: squared error on probabilities moves a Xavier-initialised MLP too little in 15 steps at
    # lr 0.01 for the two losses below to reach different validation errors
    job, _ = _job(tmp_path, "dataset=digits", "optimizer.lr=1.0")
    fitness = PartialTraining(job, steps=15)
    loss = build_loss(job.task, TaylorPolynomial(TaylorPolynomial.squared_error()), job.device)
    state = job.train_batches.state_dict()
    first, second = fitness(loss), fitness(loss)
    assert first == second
    assert torch.equal(job.train_batches.state_dict()["generator"], state["generator"])  # job's batches untouched
    with torch.no_grad():
        loss.pointwise.theta.mul_(-1)  # a loss that climbs: a different (worse) fitness
    assert fitness(loss) != first


def test_taylorglo_search_logs_monotone_best_and_keeps_the_best_candidate(tmp_path: Path) -> None:
    job, model = _job(tmp_path, "dataset=diabetes", "optimizer.lr=0.01")
    method = TaylorGLO(
        TaylorGLOConfig(
            search="cmaes",
            init="squared_error",
            cmaes=CMAESConfig(population=6, generations=4, sigma=1.0, partial_steps=15),
            meta=OfflineMetaConfig(init_steps=0),
        )
    )
    method.setup(job, model)
    method.offline(job, model)
    gens = [r for r in job.tracker.records if "offline/cmaes_best_so_far" in r]
    so_far = [r["offline/cmaes_best_so_far"] for r in gens]
    assert [r["step"] for r in gens] == [0, 1, 2, 3, 4]
    assert all(later <= earlier for earlier, later in zip(so_far, so_far[1:]))
    assert PartialTraining(job, 15)(method.loss) == pytest.approx(so_far[-1])  # the kept loss is the best one
    assert not method.loss.pointwise.theta.requires_grad


# --- meta-learned learning rate -----------------------------------------------------------------


@pytest.mark.parametrize("phase", ["offline", "online"])
def test_metalr_raises_a_learning_rate_that_starts_far_too_small(phase: str, tmp_path: Path) -> None:
    job, model = _job(tmp_path, "dataset=diabetes", "optimizer.lr=0.01")
    start = 1e-5
    meta = (
        {"init_steps": 60, "init_lr": 0.05, "online_lr": 0.0}
        if phase == "offline"
        else {"init_steps": 0, "init_lr": 0.0, "online_lr": 0.1}
    )
    method = MetaLR(MetaLRConfig(meta=OnlineMetaConfig(**meta), initial_lr=start))
    fit(job, model, method)
    job.tracker.close()
    assert float(method.lr) > 10 * start
    series = job.tracker.series(
        "offline" if phase == "offline" else "train", "offline/meta_lr" if phase == "offline" else "train/meta_lr"
    )[1]
    assert series[-1] > series[0]


def test_metalr_with_frozen_lr_is_plain_sgd_and_the_schedule_multiplies_the_learned_lr(tmp_path: Path) -> None:
    common = (
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "optimizer.weight_decay=5e-4",
        "dataset.milestones=[15,30]",
        "dataset.lr_gamma=0.2",
        "dataset.log_interval=1",
        "checkpoint.every=0",
    )
    run(tiny("method=metalr", "offline.steps=0", "method.meta.online_lr=0.0", *common), out_dir=tmp_path / "metalr")
    run(tiny("method=ce", *common), out_dir=tmp_path / "ce")
    metalr, ce = _records(tmp_path / "metalr"), _records(tmp_path / "ce")
    assert len(metalr) == len(ce) == 40
    for a, b in zip(metalr, ce):
        assert a["train/meta_lr"] == pytest.approx(a["train/lr"], rel=1e-6)
        assert a["train/base_loss"] == pytest.approx(b["train/base_loss"], rel=1e-5, abs=1e-7)
    assert sorted({round(r["train/meta_lr"], 8) for r in metalr}) == pytest.approx([0.0004, 0.002, 0.01])


# --- smoke sweep ------------------------------------------------------------------------------


def test_smoke_sweep_over_every_method(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_main(
        [
            "-m",
            "dataset=diabetes,digits",
            "method=ce,ml3,taylorglo,adalfl,metalr",
            "seed=0",
            "+experiment=smoke",
            "runtime.threads=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    # runtime.threads=1: about 20 s; two torch threads per job on a busy 2-core machine took minutes.
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert len(results) == 10
    for name, result in results.items():
        assert result["status"] == "done" and math.isfinite(result["test_metric"]), name
        assert result["experiment"] == "smoke"
        folder = sweep / name
        method = result["method"]
        if method == "metalr":
            assert (folder / "meta_lr.png").exists(), name
        elif method != "ce":
            assert (folder / "learned_loss_evolution.png").exists(), name
        if method in ("ml3", "taylorglo"):
            assert (folder / "learned_loss_offline.png").exists(), name
    # The sweep aggregated itself: one row per dataset x model, one column per method, cells = job files.
    md = (sweep / "results.md").read_text()
    assert "| dataset | model | ce | ml3 | taylorglo | metalr | adalfl |" in md
    rows = [line for line in md.split("## Paired")[0].splitlines() if line.startswith(("| diabetes", "| digits"))]
    assert len(rows) == 2
    digits_ce = next(r for r in results.values() if r["dataset"] == "digits" and r["method"] == "ce")
    assert f"{100 * digits_ce['test_metric']:.2f} ± 0.00 (n=1)" in next(r for r in rows if r.startswith("| digits"))
    assert (sweep / "figures" / "curves_digits_mlp.png").exists()
    assert (sweep / "figures" / "learned_loss_digits_mlp.png").exists()
