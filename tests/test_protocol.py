"""The experimental protocol (docs/protocol.md) as the configs compose it: budgets, optimiser,
schedule, split, augmentation, outputs and default model of every dataset; the offline budgets;
the paper tables' grids. An edit that changes a protocol value without changing this file and
docs/protocol.md fails here."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from adalfl.config import validate

from helpers import CONF, REPO, compose_config

# Source of each block: docs/protocol.md (paper / author's code / ours).
MNIST_LIKE = dict(
    steps=10_000, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, milestones=[], augment=[], num_outputs=10
)
CIFAR_LIKE = dict(
    steps=150_000,
    lr=0.01,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    milestones=[100_000, 135_000],
    lr_gamma=0.1,
    augment=["crop", "flip"],
)
REGRESSION = dict(
    steps=10_000,
    lr=0.01,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    milestones=[],
    num_outputs=1,
    test_fraction=0.2,
)

PROTOCOL = {
    "mnist": {**MNIST_LIKE, "model": "lenet5"},
    "fashion_mnist": {**MNIST_LIKE, "model": "lenet5"},
    "kmnist": {**MNIST_LIKE, "model": "lenet5"},
    "cifar10": {**CIFAR_LIKE, "num_outputs": 10, "model": "alexnet"},
    "cifar100": {**CIFAR_LIKE, "num_outputs": 100, "model": "preresnet"},
    "svhn": {**CIFAR_LIKE, "num_outputs": 10, "model": "wrn16_8"},
    "california_housing": {**REGRESSION, "model": "mlp"},
    "communities_crime": {**REGRESSION, "model": "mlp"},
    "diabetes": {**REGRESSION, "model": "mlp"},
    "digits": dict(
        steps=1000,
        lr=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        milestones=[],
        num_outputs=10,
        test_fraction=0.2,
        model="mlp_small",
    ),
}

# The paper's tables: dataset -> models (conf/experiment/table_*.yaml).
TABLE_MODELS = {
    "table_mnist": ("mnist", ["linear", "mlp", "lenet5"]),
    "table_cifar10": ("cifar10", ["alexnet", "vgg16", "allcnnc", "resnet18", "squeezenet"]),
    "table_cifar100": ("cifar100", ["preresnet", "wrn28_10", "pyramidnet"]),
    "table_svhn": ("svhn", ["wrn16_8"]),
    "table_regression": ("communities_crime,california_housing,diabetes", ["mlp"]),
}
PAPER_METHODS = ["ce", "ml3", "taylorglo", "adalfl"]


def _datasets() -> list[str]:
    return sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))


def _target(cfg: DictConfig) -> str:
    return str(cfg.model._target_).rsplit(".", 1)[-1]


def test_every_dataset_config_has_a_protocol_entry() -> None:
    assert sorted(PROTOCOL) == _datasets()


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_dataset_protocol_values(name: str) -> None:
    cfg = compose_config(f"dataset={name}")
    validate(cfg)
    d, expected = cfg.dataset, PROTOCOL[name]
    assert d.batch_size == 128 and d.val_fraction == 0.1 and d.split_seed == 0
    for key in ("steps", "lr", "momentum", "nesterov", "weight_decay", "num_outputs"):
        assert d[key] == expected[key], key
    assert list(d.milestones) == expected["milestones"]
    if expected["milestones"]:
        assert d.lr_gamma == expected["lr_gamma"]
    if "augment" in expected:
        assert list(d.augment) == expected["augment"]
    assert d.test_fraction == expected.get("test_fraction")  # None: the official test partition
    # The optimiser that is built is the protocol's (the optimizer group interpolates the dataset).
    opt = cfg.optimizer
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay, opt.dampening) == (
        expected["lr"],
        expected["momentum"],
        expected["nesterov"],
        expected["weight_decay"],
        0.0,
    )
    assert list(opt.schedule.milestones) == expected["milestones"]
    # Evaluation fits the budget: a whole number of evaluations, the last one at the final step.
    assert d.steps % d.eval_interval == 0 and d.eval_interval % d.log_interval == 0
    assert 10 <= d.steps // d.eval_interval <= 100


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_dataset_brings_its_default_model_and_the_command_line_wins(name: str) -> None:
    default = compose_config(f"dataset={name}")
    assert default.model == compose_config(f"dataset={name}", f"model={PROTOCOL[name]['model']}").model
    assert _target(compose_config(f"dataset={name}", "model=linear")) == "Linear"
    assert _target(compose_config("model=linear", f"dataset={name}")) == "Linear"  # order does not matter


def test_default_models_of_the_paper_datasets() -> None:
    assert _target(compose_config("dataset=mnist")) == "LeNet5"
    cifar10_table = {_target(compose_config("dataset=cifar10", f"model={m}")) for m in TABLE_MODELS["table_cifar10"][1]}
    assert _target(compose_config("dataset=cifar10")) in cifar10_table
    assert _target(compose_config("dataset=cifar10", "model=mlp")) == "MLP"
    default_job = compose_config()  # Digits with the small MLP
    assert _target(default_job) == "MLP" and list(default_job.model.widths) == [100, 100]


def _experiment(name: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+experiment={name}"], return_hydra_config=True)


@pytest.mark.parametrize("table", sorted(TABLE_MODELS))
def test_paper_tables_run_the_papers_models_and_methods(table: str) -> None:
    params = _experiment(table).hydra.sweeper.params
    datasets, models = TABLE_MODELS[table]
    assert params.dataset == datasets
    assert params.model.split(",") == models
    assert params.method.split(",") == PAPER_METHODS
    assert len(params.seed.split(",")) >= 3
    for dataset in datasets.split(","):  # each dataset's default model is one of its table's models
        default = _target(compose_config(f"dataset={dataset}"))
        assert default in {_target(compose_config(f"dataset={dataset}", f"model={m}")) for m in models}


def test_offline_budgets() -> None:
    cfg = compose_config("method=taylorglo")
    # paper: S_init = 2500; author's code: CMA-ES population 25, 50 generations, 500 partial steps, sigma 1.2
    assert (cfg.offline.steps, cfg.offline.population, cfg.offline.generations, cfg.offline.partial_steps) == (
        2500,
        25,
        50,
        500,
    )
    c = cfg.method.cmaes
    assert (c.population, c.generations, c.partial_steps, c.sigma) == (25, 50, 500, 1.2)
    assert c.population * c.generations * c.partial_steps == 625_000
    for method in ("adalfl", "metalr"):
        assert compose_config(f"method={method}").method.meta.init_steps == 2500
    assert compose_config("method=ml3").method.meta.init_steps == 250  # the author's code
    adalfl = compose_config("method=adalfl").method  # paper: Adam 1e-3 offline, 1e-5 online; 2 x 40 units
    assert (adalfl.meta.init_lr, adalfl.meta.online_lr) == (1e-3, 1e-5)
    assert list(adalfl.loss.hidden) == [40, 40] and adalfl.loss.activation == "smooth_leaky_relu"


def test_quick_taylorglo_preset_shortens_only_the_search_and_keeps_its_own_folder() -> None:
    full = _experiment("table_cifar10")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        quick = compose(
            config_name="config",
            return_hydra_config=True,
            overrides=["+experiment=[table_cifar10,taylorglo_quick]", "method=taylorglo"],
        )
    assert (quick.offline.population, quick.offline.generations, quick.offline.partial_steps) == (25, 10, 500)
    assert quick.method.cmaes.generations == 10
    assert quick.hydra.sweeper.params.method == "taylorglo"
    assert quick.hydra.sweeper.params.model == full.hydra.sweeper.params.model
    assert quick.experiment == "table_cifar10"
    sweep_dir = OmegaConf.to_container(quick.hydra.sweep, resolve=False)["dir"]
    assert sweep_dir != OmegaConf.to_container(full.hydra.sweep, resolve=False)["dir"]


# ----------------------------------------------------------------------------- docs/protocol.md

DOC_ROWS = {  # row label in docs/protocol.md -> dataset config key
    "base steps": "steps",
    "batch size": "batch_size",
    "learning rate": "lr",
    "momentum": "momentum",
    "Nesterov": "nesterov",
    "weight decay": "weight_decay",
    "milestones": "milestones",
    "validation fraction": "val_fraction",
    "outputs": "num_outputs",
}
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")


def _doc_tables() -> dict[str, dict[str, str]]:
    """docs/protocol.md's per-dataset tables: `dataset=<name>` in a heading starts one;
    each row's first cell is the value's label, the second its setting."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in (REPO / "docs" / "protocol.md").read_text().splitlines():
        heading = re.match(r"#+ .*`dataset=(\w+)`", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
        elif line.startswith("#"):
            current = None
        elif current is not None and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) >= 2:
                current[cells[0]] = cells[1]
    return tables


def _setting(cell: str) -> object:
    """A table cell's setting (the text before any " (" note): yes/no, a list, or a number."""
    text = cell.split(" (")[0].strip()
    if text in ("yes", "no"):
        return text == "yes"
    numbers = [float(n.replace(",", "")) for n in NUMBER.findall(text)]
    if text.startswith("[") or text == "none":
        return numbers
    return numbers[0] if numbers else text


def test_protocol_doc_agrees_with_the_dataset_configs() -> None:
    tables = _doc_tables()
    assert sorted(tables) == _datasets()
    for name, rows in tables.items():
        d = compose_config(f"dataset={name}").dataset
        for label, key in DOC_ROWS.items():
            assert label in rows, (name, label)
            value = list(d[key]) if key == "milestones" else d[key]
            assert _setting(rows[label]) == value, (name, label, rows[label], value)
        assert rows["default model"].startswith(f"`{PROTOCOL[name]['model']}`"), name


def test_claims_experiment_runs_every_method_on_real_data_at_the_defaults() -> None:
    cfg = _experiment("claims")
    params = cfg.hydra.sweeper.params
    assert params.dataset.split(",") == ["fashion_mnist", "digits", "diabetes"]
    assert set(params.method.split(",")) == {"ce", "adalfl", "ml3", "taylorglo"}
    assert params.seed.split(",") == ["0", "1", "2", "3", "4"]
    assert "model" not in params  # each dataset brings its own: the author's LeNet-5, the MLPs
    assert _target(compose_config("+experiment=claims", "dataset=fashion_mnist")) == "LeNet5"
    # only TaylorGLO's search is cheaper than the protocol; every other value is the default
    assert (cfg.offline.population, cfg.offline.generations, cfg.offline.partial_steps) == (10, 10, 250)
    assert cfg.offline.steps == 2500 and cfg.offline.ml3_steps == 250
