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

Chains. Inside an nn.Sequential (exact type), a convolution or linear layer followed by a ReLU,
and a ReLU followed by a max-pool, are replayed as one step. A conv -> ReLU -> max-pool chain
keeps only the conv's input and the pool's indices and output: its tangent is the conv's tangent
gathered at the pool's indices and masked where the pooled output is zero (max-pooling commutes
with the ReLU), which skips two full-resolution passes and keeps no full-resolution output. A
conv -> ReLU chain keeps the ReLU's output instead of the conv's. Sequential's forward hands each
child's output to the next child only, which is what makes this exact; a module that appears more
than once in the model is never part of a chain.

Parameters enter the tangent pass as dual tensors in the modules' own parameter slots, so a
parameter that forward also reads outside its layer gets its tangent too.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from adalfl.meta.stateless import replaced


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
    the H*W plane). Gathers over strided (n, c, H*W) views straight into an output laid out like
    ``indices``, so NHWC tensors are neither copied nor permuted (40% faster than gathering a
    permuted (n, H*W, c) view, measured on LeNet-5's pools)."""
    n, c = indices.shape[:2]
    out = torch.empty_like(indices, dtype=t_in.dtype)
    torch.gather(t_in.flatten(2), 2, indices.flatten(2), out=out.view(n, c, -1))
    return out


def _check_same_input(module: nn.Module, primal: torch.Tensor, recorded: torch.Tensor) -> None:
    if primal.shape != recorded.shape:
        raise RuntimeError(f"the tangent pass reached {module} with input {tuple(primal.shape)}, "
                           f"the base forward with {tuple(recorded.shape)}")


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
    @staticmethod
    def _apply(module: nn.Module) -> Callable:
        """The layer's map (input, weight, bias) -> output."""
        return F.linear if isinstance(module, nn.Linear) else module._conv_forward

    def record(self, module, x):  # noqa: ANN001, ANN201
        return type(module).forward(module, x), x.detach()

    def output(self, module, primal_in):  # noqa: ANN001, ANN201
        # Only for a chain's head called outside its chain (then its output was not kept). The
        # parameters are dual tensors here: their primals give the primal output.
        weight = _primal_tangent(module.weight)[0]
        bias = _primal_tangent(module.bias)[0] if module.bias is not None else None
        return self._apply(module)(primal_in, weight, bias)

    def tangent(self, module, out, saved, t_in):  # noqa: ANN001, ANN201
        return _linear_like_tangent(self._apply(module), saved, t_in, module.weight, module.bias)


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
_HEADS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RULES: dict[type, _Rule] = {**{kind: _CONV for kind in _HEADS}, nn.MaxPool2d: _MaxPool2d(), nn.ReLU: _ReLU()}


class _Chain(NamedTuple):
    """Consecutive children of an nn.Sequential replayed as one step: [head] -> ReLU -> [pool]."""

    head: Optional[nn.Module]  # a conv or linear layer
    relu: nn.Module
    pool: Optional[nn.Module]  # a max-pool

    @property
    def modules(self) -> list[nn.Module]:
        return [m for m in self if m is not None]


def _chain_at(children: list[nn.Module], i: int, single: set[nn.Module]) -> Optional[_Chain]:
    def kind(j: int, *types: type) -> Optional[nn.Module]:
        ok = j < len(children) and type(children[j]) in types and children[j] in single
        return children[j] if ok else None

    head = kind(i, *_HEADS)
    j = i + (head is not None)
    relu = kind(j, nn.ReLU)
    pool = kind(j + 1, nn.MaxPool2d)
    if relu is None or (head is None and pool is None):
        return None
    return _Chain(head, relu, pool)


def _find_chains(model: nn.Module) -> dict[nn.Module, dict[int, _Chain]]:
    """For every nn.Sequential with chains: the index of each chain's first child, and the chain."""
    counts: dict[nn.Module, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        counts[module] = counts.get(module, 0) + 1
    single = {m for m, n in counts.items() if n == 1}
    found: dict[nn.Module, dict[int, _Chain]] = {}
    for seq in model.modules():
        if type(seq) is not nn.Sequential or seq not in single:
            continue
        children, i = list(seq), 0
        while i < len(children):
            chain = _chain_at(children, i, single)
            if chain is None:
                i += 1
                continue
            found.setdefault(seq, {})[i] = chain
            i += len(chain.modules)
    return found


class ForwardRecord:
    """What the base step's forward left behind for one later Jacobian-vector product."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = [m for m in model.modules() if type(m) in RULES]
        self.calls: dict[nn.Module, deque] = {m: deque() for m in self.modules}
        self.chains = _find_chains(model)
        # Whose output the record keeps: in a chain, the last module that is not a pool's input.
        self.keeps_output = {m: RULES[type(m)].keeps_output for m in self.modules}
        for chains in self.chains.values():
            for chain in chains.values():
                if chain.head is not None:
                    self.keeps_output[chain.head] = False
                self.keeps_output[chain.relu] = chain.pool is None

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Run the model's ordinary forward, keeping each covered layer's input or indices
        (and dropping whatever an earlier, interrupted step left)."""
        for calls in self.calls.values():
            calls.clear()

        def recorder(module: nn.Module) -> Callable:
            rule = RULES[type(module)]

            def forward(x: torch.Tensor) -> torch.Tensor:
                if not rule.applies(module, x):
                    self.calls[module].append(None)
                    return type(module).forward(module, x)
                out, saved = rule.record(module, x)
                kept = (out[0] if isinstance(out, tuple) else out).detach() if self.keeps_output[module] else None
                self.calls[module].append((kept, saved))
                return out

            return forward

        with _patched_forwards(self.modules, recorder):
            yield

    def jvp(self, params: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor],
            buffers: dict[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """J t at the recorded forward: the model's output tangent for tangents ``tangents`` of the
        model's parameters ``params``. ``buffers`` maps the model's buffers to stand-ins (a
        train-mode forward updates them)."""

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
                if rule is _CONV:  # saved: the recorded input
                    _check_same_input(module, primal, saved)
                if out is None:
                    out = rule.output(module, primal)
                tangent = rule.tangent(module, out, saved, t_in)
                return rule.returned(module, fwAD.make_dual(out, tangent) if tangent is not None else out, saved)

            return forward

        def sequential_replayer(seq: nn.Module) -> Callable:
            children, chains = list(seq), self.chains[seq]

            def forward(x: torch.Tensor) -> torch.Tensor:
                i = 0
                while i < len(children):
                    chain = chains.get(i)
                    if chain is not None and all(self.calls[m] and self.calls[m][0] is not None for m in chain.modules):
                        x = self._replay_chain(chain, x)
                        i += len(chain.modules)
                    else:  # a call that no rule applied to: the modules one by one
                        x = children[i](x)
                        i += 1
                return x

            return forward

        with torch.no_grad(), fwAD.dual_level(), _patched_forwards(self.modules, replayer), \
                _patched_forwards(list(self.chains), sequential_replayer):
            duals = {p: fwAD.make_dual(p.detach(), t) for p, t in zip(params, tangents)}
            with replaced(self.model, {**duals, **buffers}):
                out = self.model(x)
            tangent = fwAD.unpack_dual(out).tangent
        leftover = [m for m in self.modules if self.calls[m]]
        if leftover:
            raise RuntimeError(f"the tangent pass skipped calls the base forward made to {leftover[0]}")
        return tangent if tangent is not None else torch.zeros_like(out)

    def _replay_chain(self, chain: _Chain, x_dual: torch.Tensor) -> object:
        primal, tangent = _primal_tangent(x_dual)
        if chain.head is not None:
            _, saved = self.calls[chain.head].popleft()
            _check_same_input(chain.head, primal, saved)
            tangent = _CONV.tangent(chain.head, None, saved, tangent)
        relu_out, _ = self.calls[chain.relu].popleft()
        if chain.pool is None:
            out = relu_out  # kept: a chain has a head when it has no pool
        else:
            out, indices = self.calls[chain.pool].popleft()
            # max-pool(relu(z)) = relu(max-pool(z)) at the same argmax: gather first, mask the
            # smaller pooled tensor.
            tangent = _gather_pooled(tangent, indices) if tangent is not None else None
        if tangent is not None:
            tangent = torch.ops.aten.threshold_backward(tangent, out, 0)
        dual = fwAD.make_dual(out, tangent) if tangent is not None else out
        return RULES[nn.MaxPool2d].returned(chain.pool, dual, indices) if chain.pool is not None else dual


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
