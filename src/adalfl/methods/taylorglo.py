"""TaylorGLO-style baseline (Gonzalez & Miikkulainen, 2021): an 8-parameter third-order Taylor
polynomial loss (``TaylorPolynomial``), searched offline, then frozen; a fresh model is trained
with it by plain SGD for the full budget.

Two searches over the same 8 numbers:

* ``cmaes`` (default, as TaylorGLO): CMA-ES (the ``cma`` package). A candidate's fitness is the
  validation metric after a short partial training run. Every candidate starts from ONE fixed
  initialisation and sees the same batch order and random draws, so fitness differences come from
  the loss alone. The initial polynomial is evaluated too, and the best polynomial ever evaluated
  is kept: the search never returns a loss worse (on its fitness) than the one it started from.
* ``gradient``: Algorithm 1's unrolled meta-gradients (as ML3), a cheaper option.
"""

from __future__ import annotations

import itertools
import math
import pickle
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from adalfl import preemption
from adalfl.config import ConfigError, MethodConfig, choice
from adalfl.core import JobContext, evaluate
from adalfl.data import BatchSampler
from adalfl.losses.learned import OutputWiseLoss, TaylorPolynomial
from adalfl.meta import make_engine
from adalfl.methods.learned_loss import DeadLossConfig, OfflineLearnedLoss, build_loss
from adalfl.methods.metalearning import OfflineMetaConfig, OfflineMetaTraining
from adalfl.track.progress import ProgressLog

# Fitness of a candidate whose partial training diverged (CMA-ES minimises; it only uses ranks,
# so any value above every finite fitness ranks the candidate last).
NONFINITE_FITNESS = 1e10


@dataclass(kw_only=True)
class CMAESConfig:
    """``method.cmaes``. The budget has no defaults here: they are the root ``offline`` node's
    (``adalfl.config.OfflineConfig``), which conf/method/taylorglo.yaml interpolates."""

    population: int  # candidates per generation (conf/method/taylorglo.yaml: ${offline.population})
    generations: int  # (${offline.generations})
    sigma: float = 1.2  # initial step size of the search distribution
    partial_steps: int  # base steps of one candidate's partial training (${offline.partial_steps})

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 0 or self.partial_steps < 1 or not self.sigma > 0:
            raise ConfigError(
                "method.cmaes needs population >= 2, generations >= 0, partial_steps >= 1, sigma > 0; "
                f"got {self.population}, {self.generations}, {self.partial_steps}, {self.sigma}"
            )


class Search(str, Enum):
    """``method.search``: how the polynomial is learned."""

    cmaes = "cmaes"  # TaylorGLO's CMA-ES over partial trainings
    gradient = "gradient"  # unrolled meta-gradients, as ML3


class PolynomialInit(str, Enum):
    """``method.init``: the polynomial the search starts from."""

    squared_error = "squared_error"  # (x - y)^2
    zeros = "zeros"  # the all-zero polynomial (author's code)


@dataclass(kw_only=True)
class TaylorGLOConfig(MethodConfig):
    """``method`` of conf/method/taylorglo.yaml: its schema and what ``TaylorGLO`` receives."""

    _target_: str = "adalfl.methods.taylorglo.TaylorGLO"
    name: str = "taylorglo"
    search: Search = Search.cmaes
    init: PolynomialInit = PolynomialInit.squared_error
    cmaes: CMAESConfig  # no default: its budget comes from the offline node (${offline.*} in the YAML)
    meta: OfflineMetaConfig  # search=gradient; no default: init_steps is the YAML's ${offline.steps}
    plot_every: int = 0
    dead_loss: DeadLossConfig = field(default_factory=DeadLossConfig)

    def __post_init__(self) -> None:
        self.search = choice(Search, self.search, "method.search")
        self.init = choice(PolynomialInit, self.init, "method.init")
        if self.plot_every < 0:
            raise ConfigError(f"method.plot_every must be >= 0, got {self.plot_every}")


CONFIG_SCHEMA = TaylorGLOConfig


@dataclass
class Generation:
    index: int
    best: float  # this generation's best fitness
    mean: float  # mean over its finite fitnesses (nan if none)
    nonfinite: int  # candidates whose partial training diverged
    best_so_far: float
    sigma: float


class CMAESSearch:
    """CMA-ES for a fixed number of generations, minimising ``fitness``; x0 is evaluated first (as
    generation 0). Non-finite fitness counts as ``NONFINITE_FITNESS``. The best point ever evaluated
    is kept, so the result is never worse than x0.

    Resumable between any two candidates: ``state_dict`` holds the CMA-ES object (pickled, its own
    random state included), the current generation's candidates and the fitness values evaluated so
    far, and the best point yet. ``boundary(due)`` is called after every candidate (``due`` after a
    generation's last), where the caller may checkpoint; a candidate whose evaluation raises
    ``preemption.StopRequested`` is left out of the state and evaluated again on resume.
    """

    def __init__(self, x0: Sequence[float], sigma: float, population: int, generations: int, seed: int) -> None:
        self.x0 = np.asarray(x0, dtype=np.float64)
        self.sigma, self.population, self.generations, self.seed = sigma, population, generations, seed
        self.es: object | None = None  # created after x0 is scored
        self.generation = 0  # generations completed (x0 counts as generation 0)
        self.candidates: list[np.ndarray] = []  # of the generation in progress
        self.values: list[float] = []  # their fitness so far
        self.best_x = self.x0.copy()
        self.best_f: float | None = None  # None until x0 is scored

    def run(
        self,
        fitness: Callable[[np.ndarray], float],
        on_generation: Optional[Callable[[Generation], None]] = None,
        boundary: Optional[Callable[[bool], None]] = None,
    ) -> tuple[np.ndarray, float]:
        import cma

        def score(x: np.ndarray) -> float:
            value = float(fitness(np.asarray(x, dtype=np.float64)))
            return value if math.isfinite(value) else math.inf

        def evaluated(x: np.ndarray) -> float:
            # A stop signal inside a candidate: checkpoint without it (it is redone on resume).
            while True:
                try:
                    return score(x)
                except preemption.StopRequested:
                    if boundary is None:
                        raise
                    boundary(False)  # checkpoints, then (usually) ends the process

        if self.best_f is None:
            self.best_f = evaluated(self.best_x)
            if on_generation is not None:
                f0 = self.best_f
                on_generation(Generation(0, f0, f0, int(not math.isfinite(f0)), f0, self.sigma))
            # cma's seed 0 means "from the clock": offset it so every job seed is reproducible.
            self.es = cma.CMAEvolutionStrategy(
                list(self.best_x), self.sigma, {"popsize": self.population, "seed": self.seed + 1, "verbose": -9}
            )
            if boundary is not None:
                boundary(self.generations > 0)
        es: Any = self.es
        while self.generation < self.generations:
            if not self.candidates:
                self.candidates = [np.asarray(x, dtype=np.float64) for x in es.ask()]
                self.values = []
            while len(self.values) < len(self.candidates):
                self.values.append(evaluated(self.candidates[len(self.values)]))
                if boundary is not None and len(self.values) < len(self.candidates):
                    boundary(False)
            values, candidates = self.values, self.candidates
            finite = [v for v in values if math.isfinite(v)]
            es.tell(candidates, [v if math.isfinite(v) else NONFINITE_FITNESS for v in values])
            gen_best = min(values)
            if gen_best < self.best_f:
                self.best_f, self.best_x = gen_best, candidates[values.index(gen_best)].copy()
            self.generation += 1
            self.candidates, self.values = [], []
            if on_generation is not None:
                on_generation(
                    Generation(
                        self.generation,
                        gen_best,
                        float(np.mean(finite)) if finite else math.nan,
                        len(values) - len(finite),
                        self.best_f,
                        float(es.sigma),
                    )
                )
            if boundary is not None:
                boundary(self.generation < self.generations)  # the caller checkpoints after the last
        return self.best_x, self.best_f

    def state_dict(self) -> dict:
        return {
            "es": pickle.dumps(self.es) if self.es is not None else None,
            "generation": self.generation,
            "candidates": [c.tolist() for c in self.candidates],
            "values": list(self.values),
            "best_x": self.best_x.tolist(),
            "best_f": self.best_f,
        }

    def load_state_dict(self, state: dict) -> None:
        self.es = pickle.loads(state["es"]) if state["es"] is not None else None
        self.generation = int(state["generation"])
        self.candidates = [np.asarray(c, dtype=np.float64) for c in state["candidates"]]
        self.values = [float(v) for v in state["values"]]
        self.best_x = np.asarray(state["best_x"], dtype=np.float64)
        self.best_f = None if state["best_f"] is None else float(state["best_f"])


def cmaes_minimise(
    fitness: Callable[[np.ndarray], float],
    x0: Sequence[float],
    sigma: float,
    population: int,
    generations: int,
    seed: int,
    on_generation: Optional[Callable[[Generation], None]] = None,
) -> tuple[np.ndarray, float]:
    """``CMAESSearch`` in one go: returns the best point ever evaluated and its fitness."""
    return CMAESSearch(x0, sigma, population, generations, seed).run(fitness, on_generation)


class PartialTraining:
    """The fitness of a loss: the validation metric after ``steps`` plain SGD steps from one fixed
    theta_0, with the same batch order and the same random draws (augmentation, dropout) for every
    candidate. The job's own samplers, model and RNG streams are left untouched."""

    def __init__(self, job: JobContext, steps: int) -> None:
        self.job = job
        self.steps = steps
        self.seed = job.seed + 2_000_003
        # The search's fixed theta_0: drawn from its own seed (not the job's model, and the same
        # whenever it is drawn), without moving the global RNG stream.
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(self.seed)
            self.model = job.build_model()
        self.theta0 = {k: v.clone() for k, v in self.model.state_dict().items()}

    def _devices(self) -> list[torch.device]:
        return [self.job.device] if self.job.device.type == "cuda" else []

    def __call__(self, loss: OutputWiseLoss) -> float:
        job, model = self.job, self.model
        model.load_state_dict(self.theta0)
        model.train()
        optimizer, _ = job.build_optimizer(list(model.parameters()))  # fresh: no momentum yet
        sampler = BatchSampler(job.data.train, job.batch_size, seed=self.seed)
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(self.seed)
            for _ in range(self.steps):
                preemption.check()  # a stop signal abandons the candidate (it is redone on resume)
                x, y = sampler.next()
                value = loss(model(job.data.prepare(x, training=True)), y)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
        # A diverged run can still give a finite error rate (argmax of NaN), so check theta itself.
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return math.nan
        metrics = evaluate(model, job.data.val, job.data, job.task, job.eval_batch_size)
        return metrics[job.task.metric_name]


class TaylorGLO(OfflineLearnedLoss):
    def __init__(self, config: TaylorGLOConfig) -> None:
        super().__init__(
            config.name,
            config.plot_every,
            config.dead_loss,
            "The search found a polynomial that cannot train: try more method.cmaes.generations or another method.init",
        )
        self.config = config
        self.search_name, self.init = config.search, config.init
        self.cmaes_cfg = config.cmaes
        self.meta_cfg = config.meta
        self.engine = make_engine(self.meta_cfg.backend)
        self.offline_run = OfflineMetaTraining()  # search=gradient
        self.cmaes: CMAESSearch | None = None  # search=cmaes, built from the loss's start in search()
        self._cmaes_state: dict | None = None  # restored, waiting for search() to build the search

    def build_loss(self, job: JobContext) -> OutputWiseLoss:
        theta = TaylorPolynomial.squared_error() if self.init is PolynomialInit.squared_error else None
        return build_loss(job.task, TaylorPolynomial(theta), job.device)

    def search(self, job: JobContext, loss: OutputWiseLoss) -> tuple[str, int]:
        theta = loss.pointwise.theta
        if self.search_name is Search.gradient:
            steps = self.meta_cfg.init_steps
            self.offline_run.run(
                job,
                self.engine,
                [theta],
                loss,
                steps,
                self.meta_cfg.init_lr,
                extra_scalars=lambda: self._theta_scalars(theta),
            )
            return f"Taylor loss before / after {steps} offline meta steps", steps

        c = self.cmaes_cfg
        theta.requires_grad_(False)  # partial training must not accumulate gradients into theta
        fitness_of = PartialTraining(job, c.partial_steps)

        progress = ProgressLog(job.log, job.title, "CMA-ES generation", c.generations)
        evaluated = itertools.count()  # candidates trained so far, x0 (generation 0) first

        def fitness(x: np.ndarray) -> float:
            # a line inside long generations too (at most every 20 s): a generation can outlast a minute
            progress.update(max(0, next(evaluated) - 1) / c.population)
            with torch.no_grad():
                theta.copy_(torch.as_tensor(x, dtype=theta.dtype))
            return fitness_of(loss)

        def log(gen: Generation) -> None:
            job.tracker.log(
                "offline",
                gen.index,
                {
                    "offline/cmaes_best": gen.best,
                    "offline/cmaes_mean": gen.mean,
                    "offline/cmaes_best_so_far": gen.best_so_far,
                    "offline/cmaes_nonfinite": gen.nonfinite,
                    "offline/cmaes_sigma": gen.sigma,
                },
            )
            progress.update(gen.index, best_fitness=gen.best, mean_fitness=gen.mean, best_so_far=gen.best_so_far)

        x0 = theta.detach().cpu().double().numpy().copy()
        self.cmaes = CMAESSearch(x0, c.sigma, c.population, c.generations, job.seed)
        if self._cmaes_state is not None:  # resumed in the middle of the search
            self.cmaes.load_state_dict(self._cmaes_state)
            self._cmaes_state = None
        # A checkpoint after every generation, and after any candidate when a stop signal waits.
        best_x, best_f = self.cmaes.run(fitness, log, boundary=lambda due: job.offline_boundary(due))
        if not math.isfinite(best_f):
            raise RuntimeError(
                "TaylorGLO search: every candidate's partial training diverged; lower optimizer.lr "
                "or method.cmaes.sigma"
            )
        with torch.no_grad():
            theta.copy_(torch.as_tensor(best_x, dtype=theta.dtype))
        theta.requires_grad_(True)
        job.tracker.log("offline", c.generations, self._theta_scalars(theta))
        return f"Taylor loss before / after {c.generations} CMA-ES generations", c.generations

    def search_state_dict(self) -> dict:
        if self.search_name is Search.gradient:
            return {"gradient": self.offline_run.state_dict()}
        state = self.cmaes.state_dict() if self.cmaes is not None else self._cmaes_state
        return {"cmaes": state}

    def load_search_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        if "gradient" in state:
            self.offline_run.load_state_dict(state["gradient"])
        else:
            self._cmaes_state = state["cmaes"]

    @staticmethod
    def _theta_scalars(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        names = ("a", "b", "c1", "c2", "c3", "c4", "c5", "c6")
        return {f"offline/taylor_{n}": theta[i].detach() for i, n in enumerate(names)}
