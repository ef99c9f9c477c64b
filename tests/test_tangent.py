"""The tangent pass's rules (adalfl.meta.tangent) against plain forward-mode AD, layer by layer and
chain by chain, and the meta-gradient on every model of the zoo against `higher` and against
finite differences. On a GPU: ADALFL_TEST_DEVICE=cuda pytest tests/test_tangent.py."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from adalfl.app import _build_model
from adalfl.losses import Task
from adalfl.losses.learned import OutputWiseLoss, PointwiseNetwork
from adalfl.meta import make_engine
from adalfl.meta.tangent import RULES, ForwardRecord
from helpers import TEST_DEVICE
from test_models import PAIRS, compose_config

pytestmark = pytest.mark.skipif(
    TEST_DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="ADALFL_TEST_DEVICE=cuda without a GPU"
)
F64 = torch.float64


def _compare_with_forward_mode(model: nn.Module, x: torch.Tensor, seed: int = 0) -> ForwardRecord:
    """The recorded tangent pass and plain forward-mode AD through the whole model (functional_call
    with dual parameters) give the same J t, for random parameter tangents t."""
    torch.manual_seed(seed)
    names, params = zip(*model.named_parameters())
    tangents = [torch.randn_like(p) for p in params]
    before = {name: buf.clone() for name, buf in model.named_buffers()}  # the base forward moves them
    record = ForwardRecord(model)
    with record.recording():
        out = model(x)
    got = record.jvp(params, tangents, {buf: buf.clone() for buf in model.buffers()}, x)
    with torch.no_grad(), fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), t) for n, p, t in zip(names, params, tangents)}
        expected = fwAD.unpack_dual(functional_call(model, {**duals, **before}, (x,))).tangent
    assert got.shape == out.shape
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert all("forward" not in vars(m) for m in model.modules())  # the patched forwards are gone
    return record


class _OneByOne(nn.Module):
    """The layers of ``layers`` called one after another from forward, outside any Sequential."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "elu_inplace": lambda: nn.ELU(alpha=0.7, inplace=True),
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}


@pytest.mark.parametrize("sequential", [True, False], ids=["chain", "one_by_one"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_pointwise_activation_rules(activation: str, sequential: bool) -> None:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 7), ACTIVATIONS[activation](), nn.Linear(7, 3), ACTIVATIONS[activation](), nn.Linear(3, 2)]
    model = (nn.Sequential(*layers) if sequential else _OneByOne(*layers)).to(TEST_DEVICE, F64)
    record = _compare_with_forward_mode(model, torch.randn(6, 5, dtype=F64, device=TEST_DEVICE))
    assert type(layers[1]) in RULES and layers[1] in record.modules
    assert bool(record.chains) == sequential


def _conv_net(activation: Callable[[], nn.Module], pool: nn.Module, batch_norm: bool = False) -> nn.Module:
    bn = [nn.BatchNorm2d(4)] if batch_norm else []
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        *bn,
        activation(),
        pool,
        nn.Conv2d(4, 3, 3),
        activation(),
        nn.Flatten(),
        nn.LazyLinear(2),
    )


POOLS: dict[str, Callable[[], nn.Module]] = {
    "max": lambda: nn.MaxPool2d(2),
    "max_ceil_padded": lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    "avg": lambda: nn.AvgPool2d(2),
    "avg_padded_exclusive": lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "avg_divisor": lambda: nn.AvgPool2d(2, divisor_override=3),
    "adaptive_avg": lambda: nn.AdaptiveAvgPool2d((3, 4)),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_conv_activation_pool_chains(activation: str, pool: str, channels_last: bool) -> None:
    """conv -> activation -> pool in a Sequential: an output-derivative activation before a max-pool
    is replayed pool first; GELU (derivative from its input) and average pools are not."""
    torch.manual_seed(0)
    model = _conv_net(ACTIVATIONS[activation], POOLS[pool]())
    x = torch.randn(3, 2, 9, 10)
    model(x)  # sizes the lazy head
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(TEST_DEVICE, F64, memory_format=fmt)
    record = _compare_with_forward_mode(model, x.to(TEST_DEVICE, F64).contiguous(memory_format=fmt))
    (chain,) = record.chains[model].values()
    assert len(chain) == 5  # conv, activation, pool, conv, activation
    assert (model[1] in record.pooled_first) == (pool.startswith("max") and activation != "gelu")


def test_lenet5_tanh_avgpool_chains_and_kept_outputs() -> None:
    """The author's LeNet-5: two chains (features, classifier); the record keeps the tanh outputs
    (their derivative needs them) and each chain's result, not the convolutions' outputs."""
    from adalfl.models.lenet import LeNet5

    torch.manual_seed(0)
    model = LeNet5([1, 28, 28], 10).to(TEST_DEVICE, F64)
    record = _compare_with_forward_mode(model, torch.randn(4, 1, 28, 28, dtype=F64, device=TEST_DEVICE))
    assert [len(c) for c in record.chains[model.features].values()] == [6]
    assert [len(c) for c in record.chains[model.classifier].values()] == [5]
    kept = [type(m).__name__ for m in model.features if record.keeps_output[m]]
    assert kept == ["Tanh", "Tanh", "AvgPool2d"]


BN_CASES = {
    "1d_flat": (lambda: nn.BatchNorm1d(5), (8, 5)),
    "1d_sequence": (lambda: nn.BatchNorm1d(5), (4, 5, 3)),
    "2d": (lambda: nn.BatchNorm2d(5), (4, 5, 3, 2)),
    "2d_no_affine": (lambda: nn.BatchNorm2d(5, affine=False), (4, 5, 3, 2)),
    "2d_cumulative_average": (lambda: nn.BatchNorm2d(5, momentum=None), (4, 5, 3, 2)),
    "2d_no_running_stats": (lambda: nn.BatchNorm2d(5, track_running_stats=False), (4, 5, 3, 2)),
    "3d": (lambda: nn.BatchNorm3d(5), (2, 5, 2, 3, 2)),
}


class _AroundNorm(nn.Module):
    """A 1x1 projection into the norm (so its input has a tangent), the norm, a nonlinearity."""

    def __init__(self, norm: nn.Module, dims: int) -> None:
        super().__init__()
        self.proj = nn.Linear(5, 5)
        self.norm = norm
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x.movedim(1, -1)).movedim(-1, 1) if self.dims > 2 else self.proj(x)
        return torch.tanh(self.norm(h)).flatten(1)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", sorted(BN_CASES))
def test_batchnorm_rule(case: str, mode: str) -> None:
    """Training mode: batch statistics, kept from the base forward; evaluation mode: an affine map
    of the running statistics (which a few training forwards have moved away from 0 and 1)."""
    make, shape = BN_CASES[case]
    torch.manual_seed(0)
    model = _AroundNorm(make(), len(shape)).to(TEST_DEVICE, F64)
    if model.norm.affine:
        with torch.no_grad():  # not the 1/0 initialisation, so that a wrong gamma or beta shows
            model.norm.weight.uniform_(0.5, 1.5)
            model.norm.bias.uniform_(-0.5, 0.5)
    for _ in range(3):
        model(3 * torch.randn(*shape, dtype=F64, device=TEST_DEVICE) + 1)
    model.train(mode == "train")
    record = _compare_with_forward_mode(model, torch.randn(*shape, dtype=F64, device=TEST_DEVICE))
    assert model.norm in record.modules


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_conv_batchnorm_relu_pool_chain_in_a_sequential(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 1),
        nn.BatchNorm2d(3),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    ).to(TEST_DEVICE, F64)
    model(torch.randn(5, 2, 6, 6, dtype=F64, device=TEST_DEVICE))  # running statistics off 0/1 for eval
    model.train(mode == "train")
    x = torch.randn(5, 2, 6, 6, dtype=F64, device=TEST_DEVICE).contiguous(memory_format=torch.channels_last)
    record = _compare_with_forward_mode(model, x)
    assert [len(c) for c in record.chains[model].values()] == [8]  # Flatten has no rule


class _InPlaceAfterKeptOutputs(nn.Module):
    """Base-forward in-place operations on outputs the record keeps: a conv output doubled in place,
    a BatchNorm output with a residual added in place (as torchvision's BasicBlock does), a tanh
    output scaled in place. The replay must notice and recompute them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.tanh = nn.Tanh()
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h.mul_(2.0)
        out = self.bn(h)
        out += x
        t = self.tanh(torch.sin(out))
        t.mul_(3.0)
        return self.head(torch.cos(t).flatten(1))


def test_outputs_changed_in_place_after_the_record_are_recomputed() -> None:
    torch.manual_seed(0)
    model = _InPlaceAfterKeptOutputs().to(TEST_DEVICE, F64)
    _compare_with_forward_mode(model, torch.randn(4, 3, 4, 4, dtype=F64, device=TEST_DEVICE))


def test_covered_layers_do_not_run_their_forward_in_the_tangent_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the rules: the tangent pass reuses the base forward instead of recomputing
    convolutions, activations and BatchNorm (their class forwards are never called in it)."""
    from adalfl.models.resnet import preresnet20

    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "a": preresnet20([3, 8, 8], 4),
            "b": nn.Sequential(
                nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2), nn.Sigmoid(), nn.Linear(2, 2), nn.GELU()
            ),
        }
    )
    model.to(TEST_DEVICE)
    x = torch.randn(4, 3, 8, 8, device=TEST_DEVICE)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return model["a"](inputs) + model["b"](inputs.mean(dim=(2, 3)))[:, :1]

    model.forward = forward
    params = list(model.parameters())
    record = ForwardRecord(model)
    with record.recording():
        model(x)
    calls: list[str] = []
    for kind in (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Tanh, nn.Sigmoid, nn.GELU):
        original = kind.forward
        monkeypatch.setattr(
            kind, "forward", lambda self, *a, _o=original, **k: calls.append(type(self).__name__) or _o(self, *a, **k)
        )
    record.jvp(params, [torch.randn_like(p) for p in params], {b: b.clone() for b in model.buffers()}, x)
    assert calls == []


# ---------------------------------------------------------------------------------------------
# The meta-gradient on every model of the zoo, in float64 at batch 4.

# Double backward (the `higher` side) through the larger networks takes tens of seconds to
# minutes on a 2-core CPU: these run by default, the rest under -m slow.
CHEAP = {"linear", "mlp", "mlp_small", "lenet5", "lenet5_relu", "smallcnn", "preresnet20"}
ZOO = [(m, d, ()) for m, d in PAIRS] + [("smallcnn", "cifar10", ("model.batch_norm=true",))]
ZOO_PARAMS = [
    pytest.param(m, d, o, id="-".join([m, d, *o]), marks=() if m in CHEAP else pytest.mark.slow) for m, d, o in ZOO
]
# A larger learning rate than the protocol's 0.01: a larger meta-gradient stands out of the finite
# differences' rounding (the validation loss moves by eps * lr * ...).
SGD_KW = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _zoo_setup(model: str, dataset: str, overrides: tuple[str, ...]):
    cfg = compose_config(f"model={model}", f"dataset={dataset}", "logger=none", *overrides)
    torch.manual_seed(0)
    net = _build_model(cfg, TEST_DEVICE).to(F64).train()
    task = Task(cfg.dataset.task, cfg.dataset.num_outputs)
    pointwise = PointwiseNetwork(
        hidden=(8, 8),
        activation="smooth_leaky_relu",
        output_activation="smooth_leaky_relu",
        beta=10.0,
        gamma=0.01,
        init="default",
        bias=True,
        inputs=2,
    )
    loss = OutputWiseLoss(task, pointwise, reduction="mean", task_loss_term=False, residual=False).to(TEST_DEVICE, F64)
    shape, n = list(cfg.dataset.input_shape), int(cfg.dataset.num_outputs)
    fmt = torch.channels_last if len(shape) == 3 else torch.contiguous_format  # as jobs run

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(4, *shape, dtype=F64, device=TEST_DEVICE).contiguous(memory_format=fmt)
        y = (
            torch.randint(0, n, (4,), device=TEST_DEVICE)
            if task.classification
            else torch.randn(4, n, dtype=F64, device=TEST_DEVICE)
        )
        return x, y

    return net, loss, task, batch(), batch()


def _meta_step(backend: str, net: nn.Module, loss: nn.Module, task: Task, train, val):
    optimizer = torch.optim.SGD(net.parameters(), **SGD_KW)
    torch.manual_seed(5)  # the dropout masks (All-CNN-C)
    return make_engine(backend).step(net, optimizer, loss, list(loss.parameters()), train, val, task.loss)


@pytest.mark.parametrize(("model", "dataset", "overrides"), ZOO_PARAMS)
def test_zoo_meta_gradient_equals_higher(model: str, dataset: str, overrides: tuple[str, ...]) -> None:
    """The default engine (forward mode, tangent pass on the recorded forward) and `higher`
    (differentiating through the base step's backward pass) give the same meta-gradient."""
    net, loss, task, train, val = _zoo_setup(model, dataset, overrides)
    twin = copy.deepcopy(net)
    func = _meta_step("func", net, loss, task, train, val)
    higher = _meta_step("higher", twin, loss, task, train, val)
    a = torch.cat([g.flatten() for g in func.meta_grads])
    b = torch.cat([g.flatten() for g in higher.meta_grads])
    assert b.abs().sum() > 0
    assert torch.linalg.vector_norm(a - b) <= 1e-8 * torch.linalg.vector_norm(b), model


@pytest.mark.parametrize(("model", "dataset", "overrides"), ZOO_PARAMS)
def test_zoo_meta_gradient_matches_finite_differences(model: str, dataset: str, overrides: tuple[str, ...]) -> None:
    """<dL/dphi, d> against a central difference of the validation loss after one real
    torch.optim.SGD step, along a random direction d of the loss parameters."""
    net, loss, task, train, val = _zoo_setup(model, dataset, overrides)
    start = copy.deepcopy(net)
    step = _meta_step("func", net, loss, task, train, val)
    phi = list(loss.parameters())
    torch.manual_seed(6)
    direction = [torch.randn_like(p) for p in phi]

    def val_loss(shift: float) -> float:
        model = copy.deepcopy(start)
        shifted = copy.deepcopy(loss)
        with torch.no_grad():
            for p, d in zip(shifted.parameters(), direction):
                p.add_(shift * d)
        optimizer = torch.optim.SGD(model.parameters(), **SGD_KW)
        torch.manual_seed(5)
        shifted(model(train[0]), train[1]).backward()
        optimizer.step()
        with torch.no_grad():
            return float(task.loss(model(val[0]), val[1]))

    analytic = float(sum((g * d).sum() for g, d in zip(step.meta_grads, direction)))
    assert analytic != 0.0
    # The validation forward has ReLU and max-pool kinks: a step of 1e-4 can straddle one (VGG-16
    # does), a step of 1e-6 leaves the small meta-gradients of some models in rounding noise. A
    # wrong meta-gradient matches neither.
    differences = [(val_loss(eps) - val_loss(-eps)) / (2 * eps) for eps in (1e-4, 1e-6)]
    assert any(analytic == pytest.approx(fd, rel=1e-5, abs=1e-12) for fd in differences), (model, analytic, differences)


@pytest.mark.parametrize("case", ["2d", "2d_cumulative_average", "2d_no_running_stats", "1d_flat"])
def test_recorded_batchnorm_forward_is_the_modules_own(case: str) -> None:
    """In training mode the record calls the BatchNorm kernel itself (for its batch statistics):
    the output, the running statistics and the batch counter must be nn.BatchNorm's, over steps."""
    make, shape = BN_CASES[case]
    torch.manual_seed(0)
    norm = make().to(TEST_DEVICE)
    twin = copy.deepcopy(norm)
    record = ForwardRecord(norm)
    for _ in range(3):
        x = 2 * torch.randn(*shape, device=TEST_DEVICE) + 1
        with record.recording():
            got = norm(x)
        torch.testing.assert_close(got, twin(x))
    for (name, a), b in zip(norm.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="more than 1 value per channel"), record.recording():
        norm(torch.randn(1, shape[1], *[1] * (len(shape) - 2), device=TEST_DEVICE))  # one value per channel
