"""Jacobian-vector products that reuse the base step's forward pass.

Forward-mode AD computes a primal and a tangent together, so a JVP after the fact normally redoes
the whole forward pass. The meta-gradient needs J u at theta_t on the training batch, whose
forward the base step has just run. ``ForwardRecord`` keeps what the tangent of the costly layers
needs from that forward (a convolution's or linear layer's input, a max-pool's indices and
output); ``ForwardRecord.jvp`` then runs the model in forward mode with those layers replaced by
their tangent alone, fed the recorded primal. Everything else (activations, BatchNorm, dropout,
pooling and the glue in ``forward`` methods) runs as ordinary forward-mode AD on primals that
equal the base forward's, so the result is the exact J u for any model; only its cost depends on
how much of the model the rules cover.

Only modules of exactly these types use a rule (a subclass may change ``forward``):
nn.Conv1d/2d/3d, nn.Linear, nn.MaxPool2d and nn.ReLU.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def _primal_tangent(tensor: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    unpacked = fwAD.unpack_dual(tensor)
    return unpacked.primal, unpacked.tangent


def _linear_like_tangent(apply: Callable, x: torch.Tensor, t_in: Optional[torch.Tensor],
                         weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """d(apply(x, W, b)) = apply(x, dW, db) + apply(dx, W, 0) for a map linear in x and in (W, b)."""
    w, t_w = _primal_tangent(weight)
    b, t_b = _primal_tangent(bias) if bias is not None else (None, None)
    if t_w is None:  # this weight is not being differentiated
        t_w = torch.zeros_like(w)
    tangent = apply(x, t_w, t_b)
    if t_in is not None:
        tangent = tangent + apply(t_in, w, None)
    return tangent


def _gather_pooled(t_in: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The tangent of max pooling: each output takes its window's argmax entry (flat index into
    the H*W plane). Works in the tensors' own memory format so NHWC inputs are not copied."""
    n, c = indices.shape[:2]
    channels_last = t_in.is_contiguous(memory_format=torch.channels_last) and not t_in.is_contiguous()
    if channels_last:
        flat_t = t_in.permute(0, 2, 3, 1).reshape(n, -1, c)
        flat_i = indices.permute(0, 2, 3, 1).reshape(n, -1, c)
        out = flat_t.gather(1, flat_i)
        return out.view(n, indices.shape[2], indices.shape[3], c).permute(0, 3, 1, 2)
    return t_in.reshape(n, c, -1).gather(2, indices.reshape(n, c, -1)).view_as(indices)


class _Rule:
    """How one module type records its base forward and replays its tangent."""

    keeps_output = True  # False: the output is recomputed from the input's primal when replayed

    def applies(self, module: nn.Module, x: torch.Tensor) -> bool:
        """False: this call runs as ordinary forward-mode AD instead."""
        return True

    def returned(self, module: nn.Module, dual: torch.Tensor, saved: object) -> object:
        """What the module's forward returns, given its output as a dual tensor."""
        return dual

    def output(self, module: nn.Module, primal_in: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def record(self, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        raise NotImplementedError

    def tangent(self, module: nn.Module, out: torch.Tensor, saved: object,
                t_in: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        raise NotImplementedError


class _ConvOrLinear(_Rule):
    def record(self, module, x):  # noqa: ANN001, ANN201
        return type(module).forward(module, x), x.detach()

    def tangent(self, module, out, saved, t_in):  # noqa: ANN001, ANN201
        if isinstance(module, nn.Linear):
            return _linear_like_tangent(F.linear, saved, t_in, module.weight, module.bias)
        return _linear_like_tangent(module._conv_forward, saved, t_in, module.weight, module.bias)


class _MaxPool2d(_Rule):
    def applies(self, module, x):  # noqa: ANN001, ANN201
        return x.dim() == 4  # batched; unbatched input runs as ordinary forward-mode AD

    def returned(self, module, dual, saved):  # noqa: ANN001, ANN201
        return (dual, saved) if module.return_indices else dual

    def record(self, module, x):  # noqa: ANN001, ANN201
        out, indices = F.max_pool2d(x, module.kernel_size, module.stride, module.padding, module.dilation,
                                    ceil_mode=module.ceil_mode, return_indices=True)
        return (out, indices) if module.return_indices else out, indices

    def tangent(self, module, out, saved, t_in):  # noqa: ANN001, ANN201
        return _gather_pooled(t_in, saved) if t_in is not None else None


class _ReLU(_Rule):
    # Recomputed rather than kept: keeping every ReLU output until the tangent pass raised the
    # small CNN's peak extra memory from 97 to 123 MB (higher's is 125) to save about 0.3 ms of a
    # 20 ms LeNet-5 iteration (benchmarks/step_cost.py).
    keeps_output = False

    def record(self, module, x):  # noqa: ANN001, ANN201
        return type(module).forward(module, x), None

    def output(self, module, primal_in):  # noqa: ANN001, ANN201
        return torch.relu(primal_in)

    def tangent(self, module, out, saved, t_in):  # noqa: ANN001, ANN201
        # t_in where the output is positive, else 0: relu's derivative as one fused op.
        return torch.ops.aten.threshold_backward(t_in, out, 0) if t_in is not None else None


_CONV = _ConvOrLinear()
RULES: dict[type, _Rule] = {nn.Linear: _CONV, nn.Conv1d: _CONV, nn.Conv2d: _CONV, nn.Conv3d: _CONV,
                            nn.MaxPool2d: _MaxPool2d(), nn.ReLU: _ReLU()}


class ForwardRecord:
    """What the base step's forward left behind for one later Jacobian-vector product."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = [m for m in model.modules() if type(m) in RULES]
        self.calls: dict[nn.Module, deque] = {m: deque() for m in self.modules}

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Run the model's ordinary forward, keeping each covered layer's input or indices."""

        def recorder(module: nn.Module) -> Callable:
            rule = RULES[type(module)]

            def forward(x: torch.Tensor) -> torch.Tensor:
                if not rule.applies(module, x):
                    self.calls[module].append(None)
                    return type(module).forward(module, x)
                out, saved = rule.record(module, x)
                kept = (out[0] if isinstance(out, tuple) else out).detach() if rule.keeps_output else None
                self.calls[module].append((kept, saved))
                return out

            return forward

        with _patched_forwards(self.modules, recorder):
            yield

    def jvp(self, names: Sequence[str], params: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor],
            buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """J t at the recorded forward: the model's output tangent for parameter tangents ``tangents``.
        ``buffers`` stand in for the model's (a train-mode forward updates them)."""

        def replayer(module: nn.Module) -> Callable:
            rule = RULES[type(module)]

            def forward(x_dual: torch.Tensor) -> torch.Tensor:
                if not self.calls[module]:
                    raise RuntimeError(f"the tangent pass called {module} more often than the base forward did")
                entry = self.calls[module].popleft()
                if entry is None:
                    return type(module).forward(module, x_dual)
                out, saved = entry
                primal, t_in = _primal_tangent(x_dual)
                if rule is _CONV and primal.shape != saved.shape:  # saved: the recorded input
                    raise RuntimeError(f"the tangent pass reached {module} with input {tuple(primal.shape)}, "
                                       f"the base forward with {tuple(saved.shape)}")
                if out is None:
                    out = rule.output(module, primal)
                tangent = rule.tangent(module, out, saved, t_in)
                return rule.returned(module, fwAD.make_dual(out, tangent) if tangent is not None else out, saved)

            return forward

        with torch.no_grad(), fwAD.dual_level(), _patched_forwards(self.modules, replayer):
            duals = {name: fwAD.make_dual(p.detach(), t) for name, p, t in zip(names, params, tangents)}
            out = functional_call(self.model, {**duals, **buffers}, (x,))
            tangent = fwAD.unpack_dual(out).tangent
        leftover = [m for m in self.modules if self.calls[m]]
        if leftover:
            raise RuntimeError(f"the tangent pass skipped calls the base forward made to {leftover[0]}")
        return tangent if tangent is not None else torch.zeros_like(out)


@contextmanager
def _patched_forwards(modules: Sequence[nn.Module], make: Callable[[nn.Module], Callable]) -> Iterator[None]:
    """Give each module an instance-level ``forward`` (shadowing its class's) for the duration."""
    for module in modules:
        module.forward = make(module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward
