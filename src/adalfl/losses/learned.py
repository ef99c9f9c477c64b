"""Learned-loss parameterisations. Each is output-wise: a scalar function l(prediction_c, target_c)
applied to every output of every example and averaged, M(y, f(x)) = mean_b (1/C) sum_c l(f_bc, y_bc).
Classification feeds softmax probabilities and one-hot targets, regression raw values
(``Task.loss_inputs``)."""

from __future__ import annotations

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
    def forward(ctx, x: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        ctx.beta, ctx.gamma = beta, gamma
        return _phi(x, beta, gamma)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return grad * _phi_slope(torch.sigmoid(x * ctx.beta), ctx.gamma), None, None


class _SmoothLeakyReLUWithSlope(torch.autograd.Function):
    """(phi(x), phi'(x)) as one node, for ``PointwiseNetwork.value_and_slope``. Its backward is
    differentiated by nobody (the meta-gradient differentiates that forward pass once), so it is
    written with the second derivative, beta (1 - gamma) sigmoid (1 - sigmoid), in closed form."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        sig = torch.sigmoid(x * beta)
        slope = _phi_slope(sig, gamma)
        ctx.save_for_backward(sig, slope)
        ctx.curvature = beta * (1 - gamma)
        return _phi(x, beta, gamma), slope

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value: torch.Tensor, grad_slope: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001, E501
        sig, slope = ctx.saved_tensors
        return grad_value * slope + grad_slope * (sig * (1 - sig) * ctx.curvature), None, None


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

    def value_and_slope(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(x) and phi'(x), both once differentiable."""
        return _SmoothLeakyReLUWithSlope.apply(x, self.beta, self.gamma)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}"


def _activation(name: str, beta: float, gamma: float) -> nn.Module:
    if name == "smooth_leaky_relu":
        return SmoothLeakyReLU(beta, gamma)
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":
        return SmoothLeakyReLU(beta=1.0, gamma=0.0)  # the softplus, on the faster path above
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}: use smooth_leaky_relu, relu, softplus or none")


def _value_and_slope(activation: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
    """The activation and its derivative at x, elementwise."""
    if isinstance(activation, SmoothLeakyReLU):
        return activation.value_and_slope(x)
    if isinstance(activation, nn.ReLU):
        return activation(x), (x > 0).to(x.dtype)
    if isinstance(activation, nn.Identity):
        return x, 1.0
    raise TypeError(f"no derivative for {activation}")


class PointwiseNetwork(nn.Module):
    """l_phi: R^2 -> R, a small MLP on (prediction, target) pairs."""

    def __init__(
        self,
        hidden: Sequence[int] = (40, 40),
        activation: str = "smooth_leaky_relu",
        output_activation: str = "smooth_leaky_relu",
        beta: float = 10.0,
        gamma: float = 0.01,
        init: str = "default",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = 2
        for width in hidden:
            layers += [nn.Linear(size, int(width)), _activation(activation, beta, gamma)]
            size = int(width)
        layers += [nn.Linear(size, 1), _activation(output_activation, beta, gamma)]
        self.net = nn.Sequential(*layers)
        if init == "xavier":
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
        elif init != "default":
            raise ValueError(f"unknown loss-network init {init!r}: use default (PyTorch's) or xavier")

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.net(pairs).squeeze(-1)

    def value_and_slope(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """l(prediction, target) and dl/dprediction for every pair, both differentiable in the
        network's parameters: the forward pass carries the derivative along (forward mode, by hand)."""
        h, slope = pairs, None
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                # d(W h + b)/dprediction: W's first column at the input layer, W slope after it.
                slope = layer.weight[:, 0] if slope is None else slope @ layer.weight.T
                h = layer(h)
            else:
                h, layer_slope = _value_and_slope(layer, h)
                slope = slope * layer_slope
        return h.squeeze(-1), slope.squeeze(-1)


class OutputWiseLoss(nn.Module):
    """M_phi(y, f(x)): the pointwise function averaged over outputs and batch. A pointwise function
    that provides ``value_and_slope(pairs)`` (l and dl/dprediction) makes the meta-gradient cheaper."""

    def __init__(self, task: Task, pointwise: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.pointwise = pointwise

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction, target_values = self.task.loss_inputs(output, target)
        pairs = torch.stack((prediction, target_values), dim=-1)
        return self.pointwise(pairs).mean()

    def value_and_output_gradient(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        values, slopes = self.pointwise.value_and_slope(torch.stack((prediction, target_values), dim=-1))
        slopes = slopes / values.numel()  # M is the mean over examples and outputs
        if self.task.classification:  # through the softmax: p * (g - <p, g>)
            slopes = prediction * (slopes - (prediction * slopes).sum(dim=1, keepdim=True))
        return values.mean(), slopes

    @torch.no_grad()
    def curve(self, points: torch.Tensor, target_value: float) -> torch.Tensor:
        """l(prediction, target) for a fixed target value over a grid of predictions (for plots)."""
        pairs = torch.stack((points, torch.full_like(points, target_value)), dim=-1)
        return self.pointwise(pairs)


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
