"""Every model config builds for its datasets' input shapes, runs forward and backward with the
right output shape, re-initialises through ``reset_parameters``, and works under
``torch.func.functional_call`` with a differentiable look-ahead step (what the meta engines need)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call

from adalfl.app import _build_model
from adalfl.losses import Task
from adalfl.losses.learned import OutputWiseLoss, PointwiseNetwork
from adalfl.meta import make_engine
from adalfl.meta.tangent import ForwardRecord
from adalfl.config import ConfigError, model_name
from adalfl.configstore import register_configs
from adalfl.models import reset_parameters
from adalfl.sweep.resolvers import register_resolvers
from helpers import TEST_DEVICE

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
CPU = torch.device("cpu")

register_configs()
register_resolvers()

# Each model on the datasets the paper pairs it with (composing needs no data on disk).
PAIRS = [
    ("linear", "mnist"),
    ("linear", "california_housing"),
    ("mlp", "mnist"),
    ("mlp", "communities_crime"),
    ("mlp_small", "digits"),
    ("lenet5", "mnist"),
    ("lenet5_relu", "mnist"),
    ("lenet5", "fashion_mnist"),
    ("smallcnn", "mnist"),
    ("smallcnn", "cifar10"),
    ("alexnet", "cifar10"),
    ("vgg16", "cifar10"),
    ("allcnnc", "cifar10"),
    ("resnet18", "cifar10"),
    ("squeezenet", "cifar100"),
    ("preresnet", "cifar100"),
    ("preresnet20", "cifar100"),
    ("wrn28_10", "cifar100"),
    ("pyramidnet", "cifar100"),
    ("wrn16_8", "svhn"),
]
# Double backward through convolutions takes seconds on a 2-core CPU: only these run by default
# (preresnet20 stands in for the pre-activation blocks of preresnet, wrn16_8 and wrn28_10).
CHEAP_SECOND_ORDER = {"linear", "mlp", "mlp_small", "lenet5", "lenet5_relu", "smallcnn", "preresnet20"}
IMAGE_MODELS = sorted({p.stem for p in (CONF / "model").glob("*.yaml")} - {"linear", "mlp", "mlp_small"})


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def build(model: str, dataset: str) -> tuple[nn.Module, DictConfig]:
    cfg = compose_config(f"model={model}", f"dataset={dataset}", "logger=none")
    torch.manual_seed(0)
    return _build_model(cfg, CPU), cfg


def test_every_model_config_is_paired_with_a_dataset() -> None:
    assert {p.stem for p in (CONF / "model").glob("*.yaml")} == {m for m, _ in PAIRS}


@pytest.mark.parametrize("model,dataset", PAIRS)
def test_forward_backward_shape(model: str, dataset: str) -> None:
    net, cfg = build(model, dataset)
    x = torch.randn(2, *cfg.dataset.input_shape)
    out = net(x)
    assert out.shape == (2, cfg.dataset.num_outputs)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{model}: no finite gradient for {name}"
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters())


@pytest.mark.parametrize("model,dataset", PAIRS)
def test_reset_parameters_redraws_every_layer(model: str, dataset: str) -> None:
    """Meta-learning draws fresh initialisations with reset_parameters: a parameter owned by a
    module without its own reset_parameters would silently keep its value."""
    net, _ = build(model, dataset)
    for name, module in net.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert hasattr(module, "reset_parameters"), (
                f"{model}.{name} ({type(module).__name__}) cannot be re-initialised"
            )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(1)
    reset_parameters(net)
    for name, p in net.named_parameters():
        if p.dim() > 1:  # weights are redrawn; BatchNorm's 1/0 and zero biases legitimately repeat
            assert not torch.equal(p, before[name]), f"{model}: {name} unchanged by reset_parameters"


@pytest.mark.parametrize(
    "model,dataset",
    [(m, d) if m in CHEAP_SECOND_ORDER else pytest.param(m, d, marks=pytest.mark.slow) for m, d in PAIRS],
)
def test_model_survives_one_adalfl_iteration(model: str, dataset: str) -> None:
    """One real AdaLFL iteration (default engine, SGD with Nesterov momentum and weight decay):
    a finite, non-zero meta-gradient, updated weights, and BatchNorm statistics moved exactly as
    one plain training forward moves them (the meta forwards leave them alone)."""
    net, cfg = build(model, dataset)
    net.train()
    task = Task(cfg.dataset.task, cfg.dataset.num_outputs)
    loss = OutputWiseLoss(
        task,
        PointwiseNetwork(
            hidden=(40, 40),
            activation="smooth_leaky_relu",
            output_activation="softplus",
            beta=10.0,
            gamma=0.01,
            init="default",
            bias=True,
            inputs=2,
        ),
        reduction="mean",
        task_loss_term=False,
        residual=False,
    )
    phi = list(loss.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    shape, n = cfg.dataset.input_shape, cfg.dataset.num_outputs

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n, (4,)) if task.classification else torch.randn(4, n)
        return torch.randn(4, *shape), y

    train, val = batch(), batch()
    reference = copy.deepcopy(net)
    torch.manual_seed(1)
    reference(train[0])  # what one plain training forward does to the buffers
    before = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(1)  # the same dropout masks for the base step's forward
    engine = make_engine("func")
    step = engine.step(net, optimizer, loss, phi, train, val, task.loss)
    engine.commit(net, optimizer, step)
    assert all(torch.isfinite(g).all() for g in step.meta_grads), model
    assert any(g.abs().sum() > 0 for g in step.meta_grads), model
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters())), model
    for (name, buf), ref in zip(net.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buf, ref, msg=f"{model}: buffer {name}")


@pytest.mark.parametrize("model,dataset", PAIRS)  # forward mode only: about a second each
def test_recorded_jvp_equals_forward_mode_ad(model: str, dataset: str) -> None:
    """The engine's Jacobian-vector product, which reuses the base forward's activations for
    the layers it has rules for, equals plain forward-mode AD through the whole model."""
    net, cfg = build(model, dataset)
    net.to(TEST_DEVICE).train()
    image = len(cfg.dataset.input_shape) == 3
    x = torch.randn(4, *cfg.dataset.input_shape, device=TEST_DEVICE)
    if image:  # as jobs run (runtime.channels_last=true)
        x = x.contiguous(memory_format=torch.channels_last)
    names, params = zip(*net.named_parameters())
    tangents = [torch.randn_like(p) for p in params]

    def fresh_buffers() -> dict[str, torch.Tensor]:
        return {name: buf.clone() for name, buf in net.named_buffers()}

    record = ForwardRecord(net)
    assert record.modules, f"{model}: no layer covered by a rule"
    torch.manual_seed(1)  # dropout: every pass below draws the same masks
    with record.recording():
        out = net(x)
    torch.manual_seed(1)
    got = record.jvp(params, tangents, {buf: buf.clone() for buf in net.buffers()}, x)
    torch.manual_seed(1)
    with torch.no_grad(), fwAD.dual_level():
        duals = {name: fwAD.make_dual(p.detach(), t) for name, p, t in zip(names, params, tangents)}
        expected = fwAD.unpack_dual(functional_call(net, {**duals, **fresh_buffers()}, (x,))).tangent
    assert got.shape == out.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_image_model_on_tabular_data_fails_with_the_shape(model: str) -> None:
    cfg = compose_config(f"model={model}", "dataset=digits", "logger=none")
    with pytest.raises(ConfigError, match=r"input_shape is \[64\]"):
        _build_model(cfg, CPU)


def test_model_names_tell_the_wide_resnets_apart() -> None:
    names = {model_name(compose_config(f"model={m}", "dataset=cifar10")) for m in ("wrn16_8", "wrn28_10")}
    assert names == {"wrn16_8", "wrn28_10"}


# Parameter counts on each dataset's input shape, measured by instantiating; the configs' comments
# state the same numbers. The first author's builds (EvoMAL code) have the same counts except where
# his build was defective: PreResNet-18 and PyramidNet got a 10-way head on CIFAR-100 (11,171,146 and
# 1,772,706) and WRN-16-8 a 100-way head on SVHN (11,007,540).
PARAMETER_COUNTS = {
    ("linear", "mnist"): 7_850,
    ("linear", "california_housing"): 9,
    ("mlp", "mnist"): 1_796_010,
    ("mlp", "communities_crime"): 1_103_001,
    ("mlp_small", "digits"): 17_610,
    ("mlp_small", "mnist"): 89_610,
    ("lenet5", "mnist"): 44_426,
    ("lenet5", "fashion_mnist"): 44_426,
    ("lenet5_relu", "mnist"): 61_706,
    ("smallcnn", "mnist"): 56_394,
    ("smallcnn", "cifar10"): 56_970,
    ("alexnet", "cifar10"): 23_272_266,
    ("vgg16", "cifar10"): 14_728_266,
    ("allcnnc", "cifar10"): 1_372_254,
    ("resnet18", "cifar10"): 11_173_962,
    ("squeezenet", "cifar100"): 781_156,
    ("squeezenet", "cifar10"): 734_986,
    ("preresnet", "cifar100"): 11_217_316,
    ("preresnet20", "cifar100"): 278_132,
    ("wrn28_10", "cifar100"): 36_536_884,
    ("pyramidnet", "cifar100"): 1_778_556,
    ("wrn16_8", "svhn"): 10_961_370,
}


def test_every_pairing_has_a_parameter_count() -> None:
    assert set(PAIRS) <= set(PARAMETER_COUNTS)


@pytest.mark.parametrize("model,dataset", sorted(PARAMETER_COUNTS))
def test_parameter_count(model: str, dataset: str) -> None:
    """Guards each architecture against silent changes: one layer more or less, a bias dropped."""
    net, _ = build(model, dataset)
    assert sum(p.numel() for p in net.parameters()) == PARAMETER_COUNTS[model, dataset]


# The first author's initialisation of each network (each EvoMAL model file's reset()); the
# project's own networks use PyTorch's defaults.
INIT_SCHEMES = {
    "linear": "xavier",
    "mlp": "xavier",
    "mlp_small": "xavier",
    "lenet5": "xavier",
    "lenet5_relu": "default",
    "smallcnn": "default",
    "alexnet": "kaiming",
    "vgg16": "kaiming",
    "resnet18": "kaiming",
    "allcnnc": "kaiming_convs",
    "squeezenet": "xavier_convs",
    "preresnet": "fan_out_kaiming_linear",
    "preresnet20": "default",
    "wrn16_8": "fan_out_xavier_linear",
    "wrn28_10": "fan_out_xavier_linear",
    "pyramidnet": "fan_out_xavier_linear",
}


def _expected_draw(layer: nn.Module, scheme: str) -> tuple[str, float, str]:
    """(distribution, standard deviation, bias rule) of a conv or linear layer under ``scheme``,
    written out from the definitions rather than from ``adalfl.models.init``."""
    w = layer.weight
    fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
    is_conv = isinstance(layer, nn.Conv2d)
    default = ("uniform", 1.0 / math.sqrt(3 * fan_in), "default")  # kaiming_uniform(a=sqrt(5))
    kaiming = ("normal", math.sqrt(2.0 / fan_in))
    xavier = ("uniform", math.sqrt(2.0 / (fan_in + fan_out)))
    fan_out_normal = ("normal", math.sqrt(2.0 / fan_out))
    if scheme == "xavier":
        return (*xavier, "zero")
    if scheme == "kaiming":
        return (*kaiming, "default" if is_conv else "zero")
    if scheme == "kaiming_convs":
        return (*kaiming, "default") if is_conv else default
    if scheme == "xavier_convs":
        return (*xavier, "default") if is_conv else default
    if scheme == "fan_out_kaiming_linear":
        return (*fan_out_normal, "default") if is_conv else (*kaiming, "zero")
    if scheme == "fan_out_xavier_linear":
        return (*fan_out_normal, "default") if is_conv else (*xavier, "zero")
    assert scheme == "default", scheme
    return default


@pytest.mark.parametrize("model,dataset", PAIRS)
def test_fresh_draw_follows_the_init_scheme(model: str, dataset: str) -> None:
    """Every conv and linear layer of a re-drawn model has its scheme's distribution (normal vs
    uniform, fan-in vs fan-out std) and bias rule; BatchNorm is 1/0. Catches a scheme that is not
    applied, applied to the wrong layer type, or that keeps PyTorch's default somewhere."""
    net, cfg = build(model, dataset)
    scheme = INIT_SCHEMES[model]
    assert cfg.model.init == scheme and net.init_scheme == scheme
    torch.manual_seed(3)
    reset_parameters(net)
    checked = 0
    for name, layer in net.named_modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            assert torch.all(layer.weight == 1) and torch.all(layer.bias == 0), f"{model}.{name}"
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        dist, std, bias_rule = _expected_draw(layer, scheme)
        w = layer.weight.detach()
        if w.numel() >= 2000:  # enough samples for the std to within a few per cent
            checked += 1
            assert abs(float(w.std()) / std - 1) < 0.1, f"{model}.{name}: std {float(w.std()):.4g}, expected {std:.4g}"
            peak = float(w.abs().max()) / std  # uniform: at most sqrt(3) std; 2000 normal draws: well beyond
            assert (peak <= math.sqrt(3) * 1.0001) == (dist == "uniform"), f"{model}.{name}: not {dist}"
        if layer.bias is not None:
            b = layer.bias.detach()
            if bias_rule == "zero":
                assert torch.all(b == 0), f"{model}.{name}: bias not zero"
            else:  # PyTorch's default, uniform(+-1/sqrt(fan_in))
                assert b.abs().max() <= 1 / math.sqrt(w[0].numel()) and (b.numel() < 2 or b.abs().sum() > 0), (
                    f"{model}.{name}"
                )
    assert checked > 0 or model == "linear", f"{model}: no layer large enough to check"


def test_allcnnc_averages_the_whole_class_map() -> None:
    """The author's AvgPool2d(6, stride=classes) kept only the top-left 6x6 of the 8x8 class map;
    the output must be the mean over all positions of the last BatchNorm's output."""
    net, cfg = build("allcnnc", "cifar10")
    net.eval()
    maps: list[torch.Tensor] = []
    last_bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    last_bn.register_forward_hook(lambda module, inputs, output: maps.append(output))
    with torch.no_grad():
        out = net(torch.randn(2, *cfg.dataset.input_shape))
    assert maps[0].shape[1:] == (cfg.dataset.num_outputs, 8, 8)
    torch.testing.assert_close(out, maps[0].mean(dim=(2, 3)))
