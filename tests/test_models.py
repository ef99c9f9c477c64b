"""Every model config builds for its datasets' input shapes, runs forward and backward with the
right output shape, re-initialises through ``reset_parameters``, and works under
``torch.func.functional_call`` with a differentiable look-ahead step (what the meta engines need)."""

from __future__ import annotations

import copy
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
from adalfl.config import ConfigError, model_name, register_configs
from adalfl.models import reset_parameters
from adalfl.sweep.resolvers import register_resolvers
from conftest import TEST_DEVICE

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
CPU = torch.device("cpu")

register_configs()
register_resolvers()

# Each model on the datasets the paper pairs it with (composing needs no data on disk).
PAIRS = [
    ("linear", "mnist"), ("linear", "california_housing"), ("mlp", "mnist"), ("mlp", "communities_crime"),
    ("lenet5", "mnist"), ("lenet5_relu", "mnist"), ("lenet5", "fashion_mnist"), ("smallcnn", "mnist"), ("smallcnn", "cifar10"),
    ("alexnet", "cifar10"), ("vgg16", "cifar10"), ("allcnnc", "cifar10"), ("resnet18", "cifar10"),
    ("squeezenet", "cifar10"), ("preresnet", "cifar100"), ("wrn28_10", "cifar100"), ("pyramidnet", "cifar100"),
    ("wrn16_8", "svhn"),
]
# Double backward through convolutions takes seconds on a 2-core CPU: only these run by default.
CHEAP_SECOND_ORDER = {"linear", "mlp", "lenet5", "lenet5_relu", "smallcnn", "preresnet"}
IMAGE_MODELS = sorted(
    {p.stem for p in (CONF / "model").glob("*.yaml")} - {"linear", "mlp"}
)


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
            assert hasattr(module, "reset_parameters"), f"{model}.{name} ({type(module).__name__}) cannot be re-initialised"
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
    loss = OutputWiseLoss(task, PointwiseNetwork(output_activation="softplus"))
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
    if image:  # as jobs run (channels_last=true)
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


def test_parameter_counts_match_the_published_sizes() -> None:
    """Guards the architectures against silent changes (published sizes, 32x32, 10/100 classes)."""
    expected = {("wrn28_10", "cifar100"): 36.5e6, ("wrn16_8", "svhn"): 11.0e6, ("resnet18", "cifar10"): 11.17e6,
                ("pyramidnet", "cifar100"): 1.78e6, ("preresnet", "cifar100"): 0.28e6}
    for (model, dataset), count in expected.items():
        net, _ = build(model, dataset)
        n = sum(p.numel() for p in net.parameters())
        assert abs(n - count) / count < 0.02, f"{model}: {n} parameters, expected about {count:.3g}"
