"""Learned-loss parameterisations. Each is output-wise: a scalar function l(prediction_c, target_c)
applied to every output of every example and averaged, M(y, f(x)) = mean_b (1/C) sum_c l(f_bc, y_bc).
Classification feeds softmax probabilities and one-hot targets, regression raw values
(``Task.loss_inputs``)."""

from __future__ import annotations

from enum import Enum
from typing import Sequence

import torch
from torch import nn

from adalfl.losses.task import Task


def _softplus(z: torch.Tensor) -> torch.Tensor:
    """log(1 + e^z) = max(z, 0) - log(sigmoid(|z|)), stable for any z. Same values as F.softplus
    to float precision, and about 3x faster on CPU, where torch's softplus and log1p kernels are
    not vectorised (measured: 88 against 284 us for a 1280x40 batch)."""
    return torch.relu(z) - torch.log(torch.sigmoid(z.abs()))


def _phi(x: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The smooth leaky ReLU's value (see SmoothLeakyReLU)."""
    out = _softplus(x * beta) * ((1 - gamma) / beta)
    return out + gamma * x if gamma else out


def _phi_slope(sig: torch.Tensor, gamma: float) -> torch.Tensor:
    """Its derivative, (1 - gamma) sigmoid(beta x) + gamma, from sig = sigmoid(beta x)."""
    return sig * (1 - gamma) + gamma if gamma else sig


class _SmoothLeakyReLUFunction(torch.autograd.Function):
    """phi(x) as one autograd node with its derivative written out, (1 - gamma) sigmoid(beta x) +
    gamma, instead of the four nodes of the composed expression. The meta-gradient differentiates
    the loss network twice, so its node count is what costs. The backward uses differentiable
    ops, so double backward works."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.beta, ctx.gamma = beta, gamma
        return _phi(x, beta, gamma)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * _phi_slope(torch.sigmoid(x * ctx.beta), ctx.gamma), None, None


def _derivatives(activation: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float, object]:
    """An activation's value and slope at z, and what ``_slope``/``_curvature`` recompute them from."""
    if isinstance(activation, SmoothLeakyReLU):
        beta, gamma = activation.beta, activation.gamma
        bz = z * beta
        sig = torch.sigmoid(bz)
        # softplus(bz) = relu(bz) - log(sigmoid(|bz|)), and sigmoid(|bz|) = max(sig, 1 - sig).
        # In place where nothing else holds the tensor: fewer and smaller temporaries.
        value = bz.relu_().sub_(torch.maximum(sig, 1 - sig).log_()).mul_((1 - gamma) / beta)
        if gamma:
            value.add_(z, alpha=gamma)
        return value, _phi_slope(sig, gamma), sig
    if isinstance(activation, nn.ReLU):
        positive = z > 0
        return torch.relu(z), positive.to(z.dtype), positive
    if isinstance(activation, nn.Identity):
        return z, 1.0, None
    raise TypeError(f"no derivative for {activation}")


def _slope(activation: nn.Module, kept: object, dtype: torch.dtype) -> torch.Tensor | float:
    """The activation's first derivative, from what ``_derivatives`` kept."""
    if isinstance(activation, SmoothLeakyReLU):
        return _phi_slope(kept, activation.gamma)
    if isinstance(activation, nn.ReLU):
        return kept.to(dtype)
    return 1.0


def _curvature(activation: nn.Module, kept: object) -> torch.Tensor | None:
    """The activation's second derivative (None: zero), from what ``_derivatives`` kept; a new tensor."""
    if not isinstance(activation, SmoothLeakyReLU):
        return None
    return (1 - kept).mul_(kept).mul_(activation.beta * (1 - activation.gamma))


class _ValueAndSlope(torch.autograd.Function):
    """l(pairs) and dl/dprediction of an MLP l with scalar activations, in one autograd node.

    Forward: each layer's pre-activation z = h W^T + b and its derivative along the prediction,
    t_pre = W[:, 0] at the first layer and t W^T after it, then h = a(z), t = t_pre a'(z).
    Backward, written out (reverse mode through that forward, with a'' for the slope's
    dependence on z); the meta-gradient differentiates this node once, so it need not be
    differentiable itself. Tested against autograd in float64 (tests/test_meta.py).
    Each layer keeps its input h, t_pre and sigmoid(beta z); a' and t are recomputed from them,
    which keeps the node's memory below what autograd's graph of the same forward holds."""

    @staticmethod
    def forward(ctx, pairs: torch.Tensor, activations: list, *weights: torch.Tensor):
        h, t, saved = pairs, None, []
        for layer, (weight, bias) in enumerate(zip(weights[0::2], weights[1::2])):
            z = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
            t_pre = weight[:, 0].expand_as(z) if t is None else t @ weight.t()
            value, slope, kept = _derivatives(activations[layer], z)
            saved.append((h, t_pre, kept))
            h, t = value, t_pre * slope
        ctx.save_for_backward(*weights)  # checked: phi must not change before the backward (None: no bias)
        ctx.activations, ctx.saved = activations, saved
        return h.squeeze(-1), t.squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value: torch.Tensor | None, grad_slope: torch.Tensor | None):
        g_h = grad_value.unsqueeze(-1) if grad_value is not None else None
        g_t = grad_slope.unsqueeze(-1) if grad_slope is not None else None
        weights = ctx.saved_tensors
        grads: list[torch.Tensor | None] = [None] * len(weights)
        g_pairs = None
        acts, saved = ctx.activations, ctx.saved
        last = len(saved) - 1
        slope = _slope(acts[last], saved[last][2], saved[last][1].dtype)
        for layer in reversed(range(len(saved))):
            h_in, t_pre, kept = saved[layer]
            weight = weights[2 * layer]
            g_z = g_h * slope if g_h is not None else None  # through h = a(z)
            g_tpre = None
            if g_t is not None:  # through t = t_pre a'(z): a'' for z, a' for t_pre
                g_tpre = g_t * slope
                curvature = _curvature(acts[layer], kept)
                if curvature is not None:
                    g_zt = curvature.mul_(t_pre).mul_(g_t)
                    g_z = g_zt if g_z is None else g_z.add_(g_zt)
            g_weight = g_z.t() @ h_in if g_z is not None else torch.zeros_like(weight)
            if layer > 0:  # this layer's input t, recomputed: t = t_pre a'(z) of the layer below
                slope = _slope(acts[layer - 1], saved[layer - 1][2], t_pre.dtype)
                t_in = saved[layer - 1][1] * slope
            if g_tpre is not None:
                if layer == 0:  # t_pre = W[:, 0]
                    g_weight[:, 0] += g_tpre.sum(0)
                else:
                    g_weight = g_weight + g_tpre.t() @ t_in
            grads[2 * layer] = g_weight
            has_bias = weights[2 * layer + 1] is not None
            grads[2 * layer + 1] = g_z.sum(0) if g_z is not None and has_bias else None
            if layer == 0:
                g_pairs = g_z @ weight if g_z is not None else None
            else:
                g_h = g_z @ weight if g_z is not None else None
                g_t = g_tpre @ weight if g_tpre is not None else None
        return (g_pairs, None, *grads)


class SmoothLeakyReLU(nn.Module):
    """phi(x) = (1/beta) log(1 + exp(beta x)) (1 - gamma) + gamma x  (AdaLFL, Eq. for the loss network).

    Smooth everywhere (second derivatives exist, which the meta-gradient needs) and never flat
    (slope >= gamma), so the learned loss cannot lose its gradient on one side. With beta = 1 and
    gamma = 0 it is the softplus.
    """

    def __init__(self, beta: float = 10.0, gamma: float = 0.01) -> None:
        super().__init__()
        if beta <= 0 or not 0 <= gamma < 1:
            raise ValueError(f"smooth leaky ReLU needs beta > 0 and 0 <= gamma < 1, got beta={beta}, gamma={gamma}")
        self.beta, self.gamma = float(beta), float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SmoothLeakyReLUFunction.apply(x, self.beta, self.gamma)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}"


class Activation(str, Enum):
    """A loss network's activations (``method.loss.activation`` / ``output_activation``)."""

    smooth_leaky_relu = "smooth_leaky_relu"
    relu = "relu"
    softplus = "softplus"  # the smooth leaky ReLU with beta = 1, gamma = 0
    none = "none"  # the identity


class Init(str, Enum):
    """A loss network's weight initialisation (``method.loss.init``)."""

    default = "default"  # PyTorch's Linear init
    xavier = "xavier"  # uniform, zero bias
    kaiming_normal = "kaiming_normal"  # fan-in, ReLU gain, zero bias
    normal = "normal"  # N(0, 0.01^2), zero bias


class Reduction(str, Enum):
    """How M_phi reduces the pointwise values over outputs (``method.loss.reduction``)."""

    mean = "mean"  # the paper's (1/C) sum_c
    sum = "sum"  # the first author's EvoMAL code


def _activation(name: Activation | str, beta: float, gamma: float) -> nn.Module:
    name = Activation(name)
    if name is Activation.smooth_leaky_relu:
        return SmoothLeakyReLU(beta, gamma)
    if name is Activation.relu:
        return nn.ReLU()
    if name is Activation.softplus:
        return SmoothLeakyReLU(beta=1.0, gamma=0.0)  # the softplus, on the faster path above
    return nn.Identity()


class PointwiseNetwork(nn.Module):
    """l_phi: R^2 -> R, a small MLP on (prediction, target) pairs; with ``inputs=1``, l_phi: R -> R
    on regression residuals (prediction - target).

    ``bias=False`` gives a network without bias terms (the first author's ML3 and later loss
    networks): with a leaky activation it is close to positively homogeneous, so its shape away
    from the inputs seen while meta-learning extends linearly instead of arbitrarily.
    ``init``: ``default`` (PyTorch's Linear init), ``xavier`` (uniform, zero bias),
    ``kaiming_normal`` (fan-in, ReLU gain, zero bias) or ``normal`` (N(0, 0.01^2), zero bias).

    Every argument is required: the defaults live once, in the config that builds the network
    (``adalfl.methods.learned_loss.LossNetConfig``), and cannot drift from a second copy here.
    """

    def __init__(
        self,
        *,
        hidden: Sequence[int],
        activation: Activation | str,
        output_activation: Activation | str,
        beta: float,
        gamma: float,
        init: Init | str,
        bias: bool,
        inputs: int,
    ) -> None:
        super().__init__()
        if not hidden or any(int(w) <= 0 for w in hidden):
            raise ValueError(f"loss network needs at least one hidden layer of positive width, got {list(hidden)}")
        init = Init(init)
        if inputs not in (1, 2):
            raise ValueError(
                f"a pointwise loss network takes 1 (residual) or 2 (prediction, target) inputs, got {inputs}"
            )
        layers: list[nn.Module] = []
        size = inputs
        for width in hidden:
            layers += [nn.Linear(size, int(width), bias=bias), _activation(activation, beta, gamma)]
            size = int(width)
        layers += [nn.Linear(size, 1, bias=bias), _activation(output_activation, beta, gamma)]
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            for layer in self.net:
                if not isinstance(layer, nn.Linear) or init is Init.default:
                    continue
                if init is Init.xavier:
                    nn.init.xavier_uniform_(layer.weight)
                elif init is Init.kaiming_normal:
                    nn.init.kaiming_normal_(layer.weight)
                else:
                    nn.init.normal_(layer.weight, 0.0, 0.01)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.net(pairs).squeeze(-1)

    def value_and_slope(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """l(prediction, target) and dl/dprediction for every pair, both differentiable in the
        network's parameters: the forward pass carries the derivative along (forward mode, by hand),
        as one autograd node with a written-out backward."""
        linears, activations = list(self.net)[0::2], list(self.net)[1::2]
        weights = [w for layer in linears for w in (layer.weight, layer.bias)]  # bias may be None
        values, slopes = _ValueAndSlope.apply(pairs.reshape(-1, pairs.shape[-1]), activations, *weights)
        return values.view(pairs.shape[:-1]), slopes.view(pairs.shape[:-1])


class OutputWiseLoss(nn.Module):
    """M_phi(y, f(x)): the pointwise function over every output, reduced over outputs (``mean``: the
    paper's (1/C) sum_c; ``sum``: the first author's EvoMAL code) and averaged over the batch.

    ``task_loss_term=True`` adds the task loss L_T (cross-entropy / squared error) to M, as the first
    author's later loss networks do (Neural-Procedural-Bias-Meta-Learning, ``loss_network.py``): the
    learned part then corrects L_T instead of replacing it. A pointwise function that provides
    ``value_and_slope(pairs)`` (l and dl/dprediction) makes the meta-gradient cheaper.

    No defaults: a learned network's values come from ``LossNetConfig``, TaylorGLO's are written in
    ``adalfl.methods.learned_loss.build_loss``."""

    def __init__(
        self, task: Task, pointwise: nn.Module, *, reduction: Reduction | str, task_loss_term: bool, residual: bool
    ) -> None:
        super().__init__()
        reduction = Reduction(reduction)
        if residual and task.classification:
            raise ValueError("residual inputs are for regression; classification feeds (probability, one-hot) pairs")
        self.task = task
        self.pointwise = pointwise
        self.reduction = reduction
        self.task_loss_term = bool(task_loss_term)
        self.residual = bool(residual)

    def _network_inputs(self, prediction: torch.Tensor, target_values: torch.Tensor) -> torch.Tensor:
        """(..., 2) pairs (prediction, target), or (..., 1) residuals prediction - target. For a
        residual d/d(input) is d/d(prediction), so the slope the network carries along is unchanged."""
        if self.residual:
            return (prediction - target_values).unsqueeze(-1)
        return torch.stack((prediction, target_values), dim=-1)

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        """(B, C) pointwise values -> M."""
        return values.mean() if self.reduction is Reduction.mean else values.sum(dim=-1).mean()

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction, target_values = self.task.loss_inputs(output, target)
        loss = self._reduce(self.pointwise(self._network_inputs(prediction, target_values)))
        return loss + self.task.loss(output, target) if self.task_loss_term else loss

    def value_and_output_gradient(
        self, output: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M and s = dM/d output at a fixed ``output``, both differentiable in the loss's parameters.

        The meta-gradient engine needs s on the parameters' graph. Autograd would get it by
        differentiating M's backward pass (create_graph=True) and then differentiate that again;
        here the pointwise network carries dl/dprediction along its forward pass and the softmax's
        Jacobian is applied by hand, so the engine differentiates one forward pass only.
        """
        if not hasattr(self.pointwise, "value_and_slope"):  # another pointwise function: autograd
            leaf = output.detach().requires_grad_()
            loss = self(leaf, target)
            (slopes,) = torch.autograd.grad(loss, leaf, create_graph=True)
            return loss, slopes
        prediction, target_values = self.task.loss_inputs(output, target)
        values, slopes = self.pointwise.value_and_slope(self._network_inputs(prediction, target_values))
        # M is the mean over examples (and over outputs for reduction="mean")
        slopes = slopes / (values.numel() if self.reduction is Reduction.mean else values.shape[0])
        if self.task.classification:  # through the softmax: p * (g - <p, g>)
            slopes = prediction * (slopes - (prediction * slopes).sum(dim=1, keepdim=True))
        value = self._reduce(values)
        if self.task_loss_term:  # d L_T / d output needs no graph: it does not depend on phi
            with torch.no_grad():
                if self.task.classification:
                    task_slopes = (prediction - target_values) / output.shape[0]
                else:
                    task_slopes = 2 * (output - target) / output.numel()
                task_value = self.task.loss(output.detach(), target)
            value, slopes = value + task_value, slopes + task_slopes
        return value, slopes

    @torch.no_grad()
    def curve(self, points: torch.Tensor, target_value: float) -> torch.Tensor:
        """l(prediction, target) for a fixed target value over a grid of predictions (for plots)."""
        return self.pointwise(self._network_inputs(points, torch.full_like(points, target_value)))


TAYLOR_TERMS = ("u", "u^2", "u^3", "u*v", "u^2*v", "u*v^2")


class TaylorPolynomial(nn.Module):
    """TaylorGLO's loss family: a third-order bivariate Taylor polynomial in (prediction x, target y),
    expanded around a learned centre (a, b). With u = x - a and v = y - b,

        l(x, y) = c1 u + c2 u^2 + c3 u^3 + c4 u v + c5 u^2 v + c6 u v^2

    ``theta`` = (a, b, c1, ..., c6): 8 parameters. The full third-order expansion also has a constant
    and the terms v, v^2, v^3; they do not depend on the prediction, so they never change a base
    gradient and are dropped (as TaylorGLO does). The Taylor factors 1/2 and 1/6 are absorbed into the
    coefficients: the same family, a different scaling of the search space.
    """

    def __init__(self, theta: Sequence[float] | None = None) -> None:
        super().__init__()
        initial = torch.zeros(8) if theta is None else torch.as_tensor(theta, dtype=torch.float32).clone()
        if initial.shape != (8,):
            raise ValueError(f"a Taylor polynomial has 8 parameters (a, b, c1..c6), got shape {tuple(initial.shape)}")
        self.theta = nn.Parameter(initial)

    @staticmethod
    def squared_error() -> list[float]:
        """theta for l = (x - y)^2 = u^2 - 2 u v + (terms without u), centred at (0, 0): the task
        loss of regression and the Brier score of classification, a sensible starting point."""
        return [0.0, 0.0, 0.0, 1.0, 0.0, -2.0, 0.0, 0.0]

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        theta = self.theta.to(pairs.dtype)
        u = pairs[..., 0] - theta[0]
        v = pairs[..., 1] - theta[1]
        c = theta[2:]
        # Horner-style in u: u * (c1 + c4 v + c6 v^2 + u (c2 + c5 v + c3 u))
        return u * (c[0] + v * (c[3] + c[5] * v) + u * (c[1] + c[4] * v + c[2] * u))

    def value_and_slope(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """l and dl/dprediction = c1 + 2 c2 u + 3 c3 u^2 + c4 v + 2 c5 u v + c6 v^2."""
        theta = self.theta.to(pairs.dtype)
        u = pairs[..., 0] - theta[0]
        v = pairs[..., 1] - theta[1]
        c = theta[2:]
        slope = c[0] + v * (c[3] + c[5] * v) + u * (2 * c[1] + 2 * c[4] * v + 3 * c[2] * u)
        return self(pairs), slope

    def extra_repr(self) -> str:
        return "l(x, y) = c1 u + c2 u^2 + c3 u^3 + c4 u v + c5 u^2 v + c6 u v^2, u = x - a, v = y - b"
