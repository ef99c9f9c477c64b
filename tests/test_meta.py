"""The meta-gradient engines: exact (finite differences), mutually consistent, faithful to
torch.optim.SGD, and harmless to BatchNorm statistics."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from adalfl.losses import Task
from adalfl.losses.learned import OutputWiseLoss, PointwiseNetwork
from adalfl.meta import make_engine
from adalfl.meta.sgd import SGDHyper, sgd_update
from adalfl.meta.stateless import replaced
from adalfl.meta.tangent import ForwardRecord
from helpers import TEST_DEVICE

TASK = Task("classification", 3)
# The loss network these tests were written for, every argument spelt out: PointwiseNetwork has no
# defaults of its own (the job's come from the method's config, adalfl.methods.learned_loss.LossNetConfig).
NET = {
    "hidden": (8, 8),
    "activation": "smooth_leaky_relu",
    "output_activation": "smooth_leaky_relu",
    "beta": 10.0,
    "gamma": 0.01,
    "init": "default",
    "bias": True,
    "inputs": 2,
}


# OutputWiseLoss has no defaults: the plain loss (the paper's mean over outputs, on pairs, without L_T)
PLAIN = {"reduction": "mean", "task_loss_term": False, "residual": False}


def _net(**changes: object) -> PointwiseNetwork:
    return PointwiseNetwork(**{**NET, **changes})


SGD_KW = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)


def _setup(batch_norm: bool = False, dtype: torch.dtype = torch.float64, seed: int = 0, prestep: bool = True):
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 6)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(6))
    layers += [nn.Tanh(), nn.Linear(6, 3)]
    model = nn.Sequential(*layers).to(TEST_DEVICE, dtype)
    loss = OutputWiseLoss(TASK, _net(), **PLAIN).to(TEST_DEVICE, dtype)
    x, y = torch.randn(16, 4, dtype=dtype), torch.randint(0, 3, (16,))
    xv, yv = torch.randn(12, 4, dtype=dtype), torch.randint(0, 3, (12,))
    x, y, xv, yv = (t.to(TEST_DEVICE) for t in (x, y, xv, yv))
    optimizer = torch.optim.SGD(model.parameters(), **SGD_KW)
    if prestep:  # one real step first, so the look-ahead starts from non-empty momentum buffers
        optimizer.zero_grad()
        TASK.loss(model(xv), yv).backward()
        optimizer.step()
    return model, loss, optimizer, (x, y), (xv, yv)


def _val_loss_after_real_sgd_step(model, optimizer, loss_fn, train, val, lr=None) -> float:
    """L_T at theta_{t+1}, where theta_{t+1} comes from torch.optim.SGD itself on copies."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), **SGD_KW)
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict would share the buffers
    if lr is not None:
        opt.param_groups[0]["lr"] = lr
    opt.zero_grad()
    loss_fn(model(train[0]), train[1]).backward()
    opt.step()
    with torch.no_grad():
        return float(TASK.loss(model(val[0]), val[1]))


@pytest.mark.parametrize(("backend", "prestep"), [("func", True), ("higher", True), ("func", False)])
def test_loss_meta_gradient_matches_central_finite_differences(backend: str, prestep: bool) -> None:
    """prestep=False: the first step, where torch starts the momentum buffer from the gradient."""
    model, loss, optimizer, train, val = _setup(prestep=prestep)
    phi = list(loss.parameters())
    step = make_engine(backend).step(model, optimizer, loss, phi, train, val, TASK.loss)
    eps = 1e-6
    for param, grad in zip(phi, step.meta_grads):
        flat, gflat = param.data.view(-1), grad.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 7)):  # a spread of coordinates
            original = flat[i].item()
            flat[i] = original + eps
            up = _val_loss_after_real_sgd_step(model, optimizer, loss, train, val)
            flat[i] = original - eps
            down = _val_loss_after_real_sgd_step(model, optimizer, loss, train, val)
            flat[i] = original
            fd = (up - down) / (2 * eps)
            assert gflat[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), (param.shape, i)
    assert any(g.abs().sum() > 0 for g in step.meta_grads)


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_learning_rate_meta_gradient_matches_finite_differences(backend: str) -> None:
    model, _, optimizer, train, val = _setup()
    log_lr = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    step = make_engine(backend).step(
        model, optimizer, TASK.loss, [log_lr], train, val, TASK.loss, lr=log_lr.exp(), loss_has_meta_params=False
    )
    eps = 1e-6
    up = _val_loss_after_real_sgd_step(model, optimizer, TASK.loss, train, val, lr=math.exp(-2.0 + eps))
    down = _val_loss_after_real_sgd_step(model, optimizer, TASK.loss, train, val, lr=math.exp(-2.0 - eps))
    assert step.meta_grads[0].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_backends_agree_on_a_batchnorm_model_with_momentum() -> None:
    results = {}
    for backend in ("func", "higher"):
        model, loss, optimizer, train, val = _setup(batch_norm=True)
        step = make_engine(backend).step(model, optimizer, loss, list(loss.parameters()), train, val, TASK.loss)
        results[backend] = (step, dict(model.named_buffers()))
    func, higher = results["func"][0], results["higher"][0]
    for a, b in zip(func.meta_grads, higher.meta_grads):
        assert torch.linalg.vector_norm(a - b) <= 1e-6 * torch.linalg.vector_norm(b)
    for a, b in zip(func.params, higher.params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(func.buffers, higher.buffers):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert func.meta_loss.item() == pytest.approx(higher.meta_loss.item(), rel=1e-12)
    for name, buf in results["func"][1].items():
        torch.testing.assert_close(buf, results["higher"][1][name])


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_batchnorm_statistics_move_only_with_the_base_step(backend: str) -> None:
    model, loss, optimizer, train, val = _setup(batch_norm=True, dtype=torch.float32)
    reference = copy.deepcopy(model)
    reference(train[0])  # what one plain training forward does to the statistics
    make_engine(backend).step(model, optimizer, loss, list(loss.parameters()), train, val, TASK.loss)
    bn, ref_bn = model[1], reference[1]
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)
    assert int(bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 2


@pytest.mark.parametrize("backend", ["func", "higher"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_frozen_loss_lookahead_reproduces_torch_sgd(backend: str, nesterov: bool) -> None:
    """Twenty committed look-ahead steps equal twenty torch.optim.SGD steps (schedule included)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(TEST_DEVICE)
    loss = OutputWiseLoss(TASK, _net(hidden=(40, 40)), **PLAIN).to(TEST_DEVICE)
    twin = copy.deepcopy(model)
    kw = dict(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    opt_a, opt_b = torch.optim.SGD(model.parameters(), **kw), torch.optim.SGD(twin.parameters(), **kw)
    sched_a = torch.optim.lr_scheduler.MultiStepLR(opt_a, milestones=[5, 12], gamma=0.3)
    sched_b = torch.optim.lr_scheduler.MultiStepLR(opt_b, milestones=[5, 12], gamma=0.3)
    engine = make_engine(backend)
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    for _ in range(20):
        x, y = torch.randn(32, 4, device=TEST_DEVICE), torch.randint(0, 3, (32,), device=TEST_DEVICE)
        step = engine.step(model, opt_a, loss, list(loss.parameters()), (x, y), (x[:8], y[:8]), TASK.loss)
        engine.commit(model, opt_a, step)
        opt_b.zero_grad()
        loss(twin(x), y).backward()
        opt_b.step()
        sched_a.step()
        sched_b.step()
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p_a, p_b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(
            opt_a.state[p_a]["momentum_buffer"], opt_b.state[p_b]["momentum_buffer"], rtol=1e-5, atol=1e-6
        )


def test_sgd_update_is_torch_sgd_bit_for_bit() -> None:
    torch.manual_seed(2)
    params = [torch.randn(5, 3), torch.randn(3)]
    real = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.SGD(real, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
    buffers: list = [None, None]
    current = [p.clone() for p in params]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(real, grads):
            p.grad = g.clone()
        opt.step()
        update = sgd_update(current, grads, buffers, SGDHyper.from_optimizer(opt))
        current, buffers = update.params, update.buffers
        for a, b in zip(current, real):
            assert torch.equal(a, b.detach())


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="method.meta.backend"):
        make_engine("jax")


def test_backends_agree_with_dropout_masks_replayed() -> None:
    """The forward-mode product must see the base step's dropout masks (the higher backend
    differentiates the very forward that drew them)."""
    grads = {}
    for backend in ("func", "higher"):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
        loss = OutputWiseLoss(TASK, _net(), **PLAIN).double()
        x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(4)
        step = make_engine(backend).step(model, optimizer, loss, list(loss.parameters()), (x, y), (x, y), TASK.loss)
        grads[backend] = torch.cat([g.flatten() for g in step.meta_grads])
        grads[backend + "_rng"] = torch.get_rng_state()
    assert torch.linalg.vector_norm(grads["func"] - grads["higher"]) <= 1e-6 * torch.linalg.vector_norm(grads["higher"])
    assert torch.equal(grads["func_rng"], grads["higher_rng"])  # the replay leaves the generator where it was


class _Reuses(nn.Module):
    """One ReLU module called twice, a pooling layer that returns its indices, a 1-d conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.conv1d = nn.Conv1d(3, 2, 3)
        self.head = nn.Linear(2 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.pool(self.relu(self.conv(x)))
        h = self.relu(self.conv1d(pooled.flatten(2)))
        return self.head(h.flatten(1))


def _recorded_and_plain_jvp(
    model: nn.Module, x: torch.Tensor, record: ForwardRecord
) -> tuple[torch.Tensor, torch.Tensor]:
    """J t from the recorded forward, and from plain forward-mode AD, for random tangents t."""
    names, params = zip(*model.named_parameters())
    tangents = [torch.randn_like(p) for p in params]
    with record.recording():
        model(x)
    got = record.jvp(params, tangents, {}, x)
    with torch.no_grad(), fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), t) for n, p, t in zip(names, params, tangents)}
        expected = fwAD.unpack_dual(functional_call(model, duals, (x,))).tangent
    return got, expected


def test_recorded_jvp_handles_reused_modules_and_refuses_a_different_forward() -> None:
    torch.manual_seed(0)
    model = _Reuses().to(TEST_DEVICE, torch.float64)
    x = torch.randn(5, 2, 4, 8, dtype=torch.float64, device=TEST_DEVICE)
    record = ForwardRecord(model)
    torch.testing.assert_close(*_recorded_and_plain_jvp(model, x, record))
    assert "forward" not in vars(model.relu)  # the patched forwards are gone afterwards

    params = list(model.parameters())
    with record.recording():
        model(x)
    with pytest.raises(RuntimeError, match="tangent pass reached"):
        record.jvp(params, params, {}, x[:, :, :, :6])  # another input than the recorded one


class _TanhPointwise(nn.Module):  # a pointwise function without value_and_slope
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.net(pairs).squeeze(-1)


@pytest.mark.parametrize("kind", ["classification", "regression"])
@pytest.mark.parametrize(
    "pointwise", ["smooth_leaky_relu", "relu_softplus", "no_bias_sum_task_term", "taylor", "other"]
)
def test_explicit_output_gradient_equals_autograd_to_second_order(kind: str, pointwise: str) -> None:
    """s = dM/d output written out by the loss equals autograd's, and so does its derivative in
    the loss parameters (what the meta-gradient uses), in float64."""
    from adalfl.losses.learned import TaylorPolynomial

    torch.manual_seed(0)
    task = Task(kind, 4)
    if pointwise == "taylor":
        net = TaylorPolynomial([0.1, -0.2, 0.3, 1.0, -0.5, -2.0, 0.7, 0.4])
    elif pointwise == "other":
        net = _TanhPointwise()
    elif pointwise == "relu_softplus":
        net = _net(activation="relu", output_activation="softplus")
    elif pointwise == "no_bias_sum_task_term":
        net = _net(output_activation="none", bias=False, init="kaiming_normal")
    else:
        net = _net()
    if pointwise == "no_bias_sum_task_term":  # summed over outputs, plus L_T
        loss = OutputWiseLoss(task, net, reduction="sum", task_loss_term=True, residual=False).double()
    else:
        loss = OutputWiseLoss(task, net, **PLAIN).double()
    phi = list(loss.parameters())
    output = torch.randn(6, 4, dtype=torch.float64)
    target = torch.randint(0, 4, (6,)) if kind == "classification" else torch.randn(6, 4, dtype=torch.float64)
    direction = torch.randn(6, 4, dtype=torch.float64)

    value, s = loss.value_and_output_gradient(output, target)
    leaf = output.clone().requires_grad_()
    reference = loss(leaf, target)
    (s_ref,) = torch.autograd.grad(reference, leaf, create_graph=True)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-12)
    # allow_unused: an output bias never changes s
    meta = torch.autograd.grad((direction * s).sum(), phi, allow_unused=True)
    meta_ref = torch.autograd.grad((direction * s_ref).sum(), phi, allow_unused=True)
    for got, want in zip(meta, meta_ref):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_sgd_update_keeps_the_parameters_memory_layout() -> None:
    """A channels_last conv weight with one input channel has NHWC strides that add() would drop
    (it picks NCHW for the ambiguous shape); the look-ahead forward must see the model's layout."""
    weight = nn.Conv2d(1, 6, 5).to(memory_format=torch.channels_last).weight
    grad = torch.randn_like(weight)
    for hyper in (SGDHyper(lr=0.1), SGDHyper(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)):
        step = sgd_update([weight.detach()], [grad], [None], hyper)
        assert step.params[0].stride() == weight.stride()
        torch.testing.assert_close(step.params[0], weight.detach() - 0.1 * step.directions[0])


class _ChainsCalledTwice(nn.Module):
    """A Sequential replayed as one chain (conv -> ReLU -> max-pool -> conv -> in-place ReLU), whose
    modules are also called one by one outside it (the record then kept no output for some calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chained = self.features(x)
        f = self.features
        one_by_one = f[4](f[3](f[2](f[1](f[0](x)))))
        return self.head((chained * one_by_one).flatten(1))


def test_recorded_jvp_replays_sequential_chains_and_their_modules_outside_them() -> None:
    torch.manual_seed(0)
    model = _ChainsCalledTwice().to(TEST_DEVICE, torch.float64)
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64, device=TEST_DEVICE)
    record = ForwardRecord(model)
    chains = record.chains[model.features]
    assert [len(c) for c in chains.values()] == [5]
    torch.testing.assert_close(*_recorded_and_plain_jvp(model, x, record))
    assert "forward" not in vars(model.features)


class _ValueAndSlope(nn.Module):
    def __init__(self, net: PointwiseNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.value_and_slope(pairs)


@pytest.mark.parametrize(
    ("hidden", "output", "bias"),
    [
        ("smooth_leaky_relu", "smooth_leaky_relu", True),
        ("relu", "softplus", True),
        ("smooth_leaky_relu", "none", True),
        ("smooth_leaky_relu", "none", False),
    ],
)
def test_value_and_slope_backward_passes_gradcheck(hidden: str, output: str, bias: bool) -> None:
    """The written-out backward of l and dl/dprediction, in the pairs and in every parameter."""
    torch.manual_seed(0)
    net = _net(hidden=(5, 4), activation=hidden, output_activation=output, bias=bias)
    assert len(list(net.parameters())) == (6 if bias else 3)
    module = _ValueAndSlope(net.double())
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    pairs = torch.rand(3, 4, 2, dtype=torch.float64, requires_grad=True)

    def value_and_slope(pairs: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(module, dict(zip(names, params)), (pairs,))

    assert torch.autograd.gradcheck(value_and_slope, (pairs, *params))


class _WeightAlsoUsedOutsideItsLayer(nn.Module):
    """Every parameter belongs to a layer with a rule, yet forward also reads one directly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x) + x @ self.fc.weight.t()
        return self.out(torch.tanh(h))


def test_recorded_jvp_sees_parameters_used_outside_their_layer() -> None:
    torch.manual_seed(0)
    model = _WeightAlsoUsedOutsideItsLayer().to(TEST_DEVICE, torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, device=TEST_DEVICE)
    weight = model.fc.weight
    torch.testing.assert_close(*_recorded_and_plain_jvp(model, x, ForwardRecord(model)))
    assert model.fc.weight is weight  # the model's own parameters are back


def test_replaced_swaps_shared_parameters_and_buffers_and_always_restores_them() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.BatchNorm1d(3), shared)  # one Linear registered twice
    originals = list(model.parameters()) + list(model.buffers())
    stand_ins = {t: torch.zeros_like(t) for t in originals}
    weight = shared.weight
    with replaced(model, stand_ins):
        model(torch.randn(4, 3))  # a train-mode forward: BatchNorm updates its (stand-in) statistics
        assert model[0].weight is stand_ins[weight] and model[2].weight is stand_ins[weight]
    assert all(a is b for a, b in zip(list(model.parameters()) + list(model.buffers()), originals))
    assert int(model[1].num_batches_tracked) == 0 and int(stand_ins[model[1].num_batches_tracked]) == 1
    with pytest.raises(RuntimeError), replaced(model, stand_ins):
        model(torch.randn(4, 5))  # a shape error inside: the model still gets its own tensors back
    assert all(a is b for a, b in zip(list(model.parameters()) + list(model.buffers()), originals))


def test_residual_input_loss_gives_the_output_gradient_of_autograd() -> None:
    """Regression with ``regression_input=residual``: l_phi sees prediction - target only, and the
    slope carried along its forward is dM/d(output)."""
    from adalfl.losses import Task
    from adalfl.methods.learned_loss import LossNetConfig

    torch.manual_seed(0)
    task = Task("regression", 3)
    loss = LossNetConfig(regression_input="residual").build(task, torch.device("cpu")).double()
    assert loss.pointwise.net[0].weight.shape[1] == 1
    output = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(6, 3, dtype=torch.float64)
    value, slopes = loss.value_and_output_gradient(output, target)
    (expected,) = torch.autograd.grad(loss(output, target), output)
    torch.testing.assert_close(slopes, expected)
    # shifting prediction and target together leaves a residual loss unchanged
    torch.testing.assert_close(loss(output + 1.5, target + 1.5), value)
