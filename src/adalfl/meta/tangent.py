"""Jacobian-vector products that reuse the base step's forward pass.

Forward-mode AD computes a primal and a tangent together, so a JVP after the fact normally redoes
the whole forward pass. The meta-gradient needs J u at theta_t on the training batch, whose
forward the base step has just run. ``ForwardRecord`` keeps what the tangent of each covered layer
needs from that forward (a convolution's, linear layer's or BatchNorm's input, BatchNorm's batch
statistics, a max-pool's indices, an activation's output); ``ForwardRecord.jvp`` then runs the
model in forward mode with those layers replaced by their tangent alone, fed the recorded primal.
Everything else (dropout, residual additions, concatenations, functional calls such as
``torch.relu`` in ``forward`` methods) runs as ordinary forward-mode AD on primals that equal the
base forward's, so the result is the exact J u for any model; only its cost depends on how much of
the model the rules cover.

Rules, for modules of exactly these types (a subclass may change ``forward``):

* nn.Conv1d/2d/3d, nn.Linear: d(W x + b) = dW x + db + W dx, with x the recorded input.
* nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU: the derivative from the output (``*_backward`` ops, as
  forward-mode AD itself uses); nn.GELU from the recorded input.
* nn.AvgPool2d, nn.AdaptiveAvgPool2d: linear, so the tangent is the pool of the tangent.
* nn.MaxPool2d (batched): the tangent gathered at the recorded argmax indices.
* nn.BatchNorm1d/2d/3d. Normalising with batch statistics (training mode), with x-hat = (x - mu)
  * invstd: dy = gamma invstd (dx - mean(dx) - x-hat mean(dx x-hat)) + dgamma x-hat + dbeta, the
  two means per channel coming from one reduction (BatchNorm's backward kernel computes exactly
  these sums for its weight and bias gradients). The record keeps the input, and the batch mean
  and inverse standard deviation that the base forward's kernel returned (x-hat is recomputed in
  the same pass that uses it; the input is kept anyway as the previous layer's output, where
  x-hat would be a second full-size tensor). With running statistics (evaluation mode) the layer
  is an affine map.

Kept outputs. A rule's output is kept from the base forward (or recomputed from the primal input
where keeping it costs more memory than it saves time: ReLU). A later in-place operation of the
base forward (``out += skip``, an in-place ReLU) may change a kept output: its version counter
then differs, and the replay recomputes it from the primal input instead. Recorded inputs need no
such check: autograd saved them for the base step's backward, which refuses modified tensors.

Chains. Inside an nn.Sequential (exact type), a run of consecutive covered children is replayed
as one step: the tangent goes from layer to layer without dual tensors, and only the last child's
output is kept as the primal result (plus the outputs that a tangent formula reads). An activation
whose derivative comes from its output, followed by a max-pool, is replayed pool first: its tangent
is gathered at the pool's indices, then the derivative is taken at the pooled output (the value at
the argmax position), which skips a full-resolution pass and keeps no full-resolution output.
Sequential's forward hands each child's output to the next child only, which is what makes this
exact; a module that appears more than once in the model is never part of a chain.

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

aten = torch.ops.aten


def _primal_tangent(tensor: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    if tensor is None:
        return None, None
    unpacked = fwAD.unpack_dual(tensor)
    return unpacked.primal, unpacked.tangent


def _linear_like_tangent(
    apply: Callable, x: torch.Tensor, t_in: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """d(apply(x, W, b)) = apply(x, dW, db) + apply(dx, W, 0) for a map linear in x and in (W, b)."""
    w, t_w = _primal_tangent(weight)
    _, t_b = _primal_tangent(bias)
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
        raise RuntimeError(
            f"the tangent pass reached {module} with input {tuple(primal.shape)}, "
            f"the base forward with {tuple(recorded.shape)}"
        )


class _Rule:
    """How one module type records its base forward and replays its tangent."""

    keeps_output = True  # False: when replayed alone, the output is recomputed from the primal input
    needs_output = False  # the tangent formula reads the module's output
    from_output = False  # a pointwise map whose derivative is a function of its output (max-pool commutes)

    def applies(self, module: nn.Module, x: torch.Tensor) -> bool:
        """False: this call runs as ordinary forward-mode AD instead."""
        return True

    def returned(self, module: nn.Module, dual: torch.Tensor, saved: object) -> object:
        """What the module's forward returns, given its output as a dual tensor."""
        return dual

    def recorded_input(self, saved: object) -> Optional[torch.Tensor]:
        """The recorded input, if the rule keeps it (to check the replay reaches the same shape)."""
        return None

    def record(self, module: nn.Module, x: torch.Tensor) -> tuple[object, object]:
        """The module's ordinary output, and what its tangent needs besides its output."""
        raise NotImplementedError

    def output(self, module: nn.Module, primal_in: torch.Tensor, saved: object) -> torch.Tensor:
        """The output recomputed from the primal input (out of place: the primal may be a kept tensor)."""
        raise NotImplementedError

    def tangent(
        self, module: nn.Module, out: Optional[torch.Tensor], saved: object, t_in: Optional[torch.Tensor]
    ) -> Optional[torch.Tensor]:
        raise NotImplementedError


class _ConvOrLinear(_Rule):
    @staticmethod
    def _apply(module: nn.Module) -> Callable:
        """The layer's map (input, weight, bias) -> output."""
        return F.linear if isinstance(module, nn.Linear) else module._conv_forward

    def record(self, module, x):
        return type(module).forward(module, x), x.detach()

    def recorded_input(self, saved):
        return saved

    def output(self, module, primal_in, saved):
        # The parameters are dual tensors here: their primals give the primal output.
        return self._apply(module)(primal_in, _primal_tangent(module.weight)[0], _primal_tangent(module.bias)[0])

    def tangent(self, module, out, saved, t_in):
        return _linear_like_tangent(self._apply(module), saved, t_in, module.weight, module.bias)


class _MaxPool2d(_Rule):
    def applies(self, module, x):
        return x.dim() == 4  # batched; unbatched input runs as ordinary forward-mode AD

    def returned(self, module, dual, saved):
        return (dual, saved) if module.return_indices else dual

    def record(self, module, x):
        out, indices = F.max_pool2d(
            x,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            ceil_mode=module.ceil_mode,
            return_indices=True,
        )
        return (out, indices) if module.return_indices else out, indices

    def output(self, module, primal_in, saved):
        return _gather_pooled(primal_in, saved)

    def tangent(self, module, out, saved, t_in):
        return _gather_pooled(t_in, saved) if t_in is not None else None


class _FromOutput(_Rule):
    """A pointwise activation whose derivative is a function of its output."""

    needs_output = True
    from_output = True

    def __init__(self, function: Callable, derivative: Callable, keeps_output: bool = True) -> None:
        self.function = function  # (module, x) -> y, out of place even for an inplace module
        self.derivative = derivative  # (module, t, y) -> the tangent of y
        self.keeps_output = keeps_output

    def record(self, module, x):
        return type(module).forward(module, x), None

    def output(self, module, primal_in, saved):
        return self.function(module, primal_in)

    def tangent(self, module, out, saved, t_in):
        return self.derivative(module, t_in, out) if t_in is not None else None


class _ELU(_FromOutput):
    def applies(self, module, x):
        return module.alpha >= 0  # elu_backward takes the output only for alpha >= 0


class _GELU(_Rule):
    def record(self, module, x):
        return type(module).forward(module, x), x.detach()

    def recorded_input(self, saved):
        return saved

    def output(self, module, primal_in, saved):
        return F.gelu(primal_in, approximate=module.approximate)

    def tangent(self, module, out, saved, t_in):
        return aten.gelu_backward(t_in, saved, approximate=module.approximate) if t_in is not None else None


class _LinearMap(_Rule):
    """A parameter-free module linear in its input (average pooling): the tangent is the module
    applied to the tangent, and nothing needs recording."""

    def record(self, module, x):
        return type(module).forward(module, x), None

    def output(self, module, primal_in, saved):
        return type(module).forward(module, primal_in)

    def tangent(self, module, out, saved, t_in):
        return type(module).forward(module, t_in) if t_in is not None else None


class _BatchStats(NamedTuple):
    x: torch.Tensor  # the input
    mean: torch.Tensor  # per channel: the statistics the layer normalised with
    invstd: torch.Tensor  # 1 / sqrt(var + eps)
    batch: bool  # batch statistics (training mode); False: the running statistics


def _channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *[1] * (like.dim() - 2))


def _scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale + shift, per channel, in one pass."""
    return torch.addcmul(_channel_view(shift, x), x, _channel_view(scale, x))


class _BatchNorm(_Rule):
    def record(self, module, x):
        if not (module.training or (module.running_mean is None and module.running_var is None)):
            # Running statistics, which an evaluation-mode forward leaves alone: the ones it used.
            out = type(module).forward(module, x)
            invstd = torch.rsqrt(module.running_var.detach() + module.eps)
            return out, _BatchStats(x.detach(), module.running_mean.detach(), invstd, False)
        # nn.BatchNorm's own forward in training mode (torch 2.x _BatchNorm.forward), calling the
        # ATen kernel that also returns the batch mean and 1/std it normalised with: computing them
        # again (torch.var_mean) cost more than the layer itself on NHWC input (32 against 6 ms
        # for the small CNN's first BatchNorm on this CPU).
        module._check_input_dim(x)
        if x.numel() // x.shape[1] <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        factor = 0.0 if module.momentum is None else module.momentum
        if module.training and module.track_running_stats and module.num_batches_tracked is not None:
            module.num_batches_tracked.add_(1)
            factor = 1.0 / float(module.num_batches_tracked) if module.momentum is None else module.momentum
        running = not module.training or module.track_running_stats
        out, mean, invstd = aten.native_batch_norm(
            x,
            module.weight,
            module.bias,
            module.running_mean if running else None,
            module.running_var if running else None,
            True,
            factor,
            module.eps,
        )
        return out, _BatchStats(x.detach(), mean.detach(), invstd.detach(), True)

    def recorded_input(self, saved):
        return saved.x

    def output(self, module, primal_in, saved):
        weight, bias = _primal_tangent(module.weight)[0], _primal_tangent(module.bias)[0]
        scale = saved.invstd if weight is None else weight * saved.invstd
        shift = -saved.mean * scale if bias is None else bias - saved.mean * scale
        return _scale_shift(primal_in, scale, shift)

    def tangent(self, module, out, saved, t_in):
        # dy = k dx + x-hat (dgamma - k mean(dx x-hat)) + dbeta - k mean(dx), k = gamma invstd,
        # the means per channel and zero with running statistics; with x-hat = (x - mean) invstd,
        # dy = k dx + B x + C. Three passes: the two means (one reduction, BatchNorm's backward
        # kernel), B x + C, and k dx added in place; BatchNorm's backward applied to dx (the same
        # first two terms) plus the parameters' part took four.
        weight, t_w = _primal_tangent(module.weight)
        _, t_b = _primal_tangent(module.bias)
        if t_in is None and t_w is None and t_b is None:
            return None
        x, invstd = saved.x, saved.invstd
        k = invstd if weight is None else weight * invstd
        slope = torch.zeros_like(invstd) if t_w is None else t_w * invstd  # B = (dgamma - k mean(dx x-hat)) invstd
        shift = torch.zeros_like(invstd) if t_b is None else t_b.clone()  # C = dbeta - k mean(dx) - mean B
        if t_in is not None and saved.batch:
            n = x.numel() // x.shape[1]
            ones = torch.ones_like(invstd) if weight is None else weight
            sum_dx_xhat, sum_dx = aten.native_batch_norm_backward(
                t_in, x, ones, None, None, saved.mean, invstd, True, module.eps, [False, True, True]
            )[1:]
            slope -= k * invstd * sum_dx_xhat / n
            shift -= k * sum_dx / n
        shift -= saved.mean * slope
        tangent = _scale_shift(x, slope, shift)
        if t_in is not None:
            tangent.addcmul_(t_in, _channel_view(k, t_in))
        return tangent


_CONV = _ConvOrLinear()
_BN = _BatchNorm()
_HEADS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RULES: dict[type, _Rule] = {
    **{kind: _CONV for kind in _HEADS},
    **{kind: _BN for kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    nn.MaxPool2d: _MaxPool2d(),
    nn.AvgPool2d: _LinearMap(),
    nn.AdaptiveAvgPool2d: _LinearMap(),
    # ReLU's output is recomputed rather than kept when it is replayed alone: keeping every ReLU
    # output raised the small CNN's peak extra memory from 97 to 123 MB (higher's is 125) to save
    # about 0.3 ms of a 20 ms LeNet-5 iteration (benchmarks/step_cost.py).
    nn.ReLU: _FromOutput(
        lambda m, x: torch.relu(x), lambda m, t, y: aten.threshold_backward(t, y, 0), keeps_output=False
    ),
    nn.Tanh: _FromOutput(lambda m, x: torch.tanh(x), lambda m, t, y: aten.tanh_backward(t, y)),
    nn.Sigmoid: _FromOutput(lambda m, x: torch.sigmoid(x), lambda m, t, y: aten.sigmoid_backward(t, y)),
    nn.ELU: _ELU(lambda m, x: F.elu(x, m.alpha), lambda m, t, y: aten.elu_backward(t, m.alpha, 1.0, 1.0, True, y)),
    nn.GELU: _GELU(),
}


class _Call(NamedTuple):
    """One recorded call of a covered module."""

    out: Optional[torch.Tensor]  # the output, if kept (detached)
    version: int  # the kept output's version counter when recorded
    saved: object  # what the rule recorded

    def intact(self) -> bool:
        return self.out is not None and self.out._version == self.version


def _find_chains(model: nn.Module) -> dict[nn.Module, dict[int, tuple[nn.Module, ...]]]:
    """For every nn.Sequential with chains: the index of each chain's first child, and the chain
    (a run of at least two consecutive covered children, each appearing once in the model)."""
    counts: dict[nn.Module, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        counts[module] = counts.get(module, 0) + 1
    found: dict[nn.Module, dict[int, tuple[nn.Module, ...]]] = {}
    for seq in model.modules():
        if type(seq) is not nn.Sequential or counts[seq] != 1:
            continue
        children, i = list(seq), 0
        while i < len(children):
            run: list[nn.Module] = []
            for child in children[i:]:
                if type(child) not in RULES or counts[child] != 1:
                    break
                run.append(child)
                if type(child) is nn.MaxPool2d and child.return_indices:
                    break  # returns a tuple: it can only end a chain
            if len(run) >= 2:
                found.setdefault(seq, {})[i] = tuple(run)
            i += max(len(run), 1)
    return found


class ForwardRecord:
    """What the base step's forward left behind for one later Jacobian-vector product."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = [m for m in model.modules() if type(m) in RULES]
        self.calls: dict[nn.Module, deque] = {m: deque() for m in self.modules}
        self.chains = _find_chains(model)
        # Whose output the record keeps. In a chain: the last child's (the chain's result) and those
        # a tangent formula reads; for an activation whose max-pool is replayed first, the pool's
        # instead of its own.
        self.keeps_output = {m: RULES[type(m)].keeps_output for m in self.modules}
        self.pooled_first: set[nn.Module] = set()
        for chains in self.chains.values():
            for chain in chains.values():
                for i, module in enumerate(chain):
                    rule = RULES[type(module)]
                    before_pool = i + 1 < len(chain) and type(chain[i + 1]) is nn.MaxPool2d
                    if rule.from_output and before_pool:
                        self.pooled_first.add(module)
                    after_pooled_first = i > 0 and chain[i - 1] in self.pooled_first
                    self.keeps_output[module] = (
                        i + 1 == len(chain)
                        or after_pooled_first
                        or (rule.needs_output and module not in self.pooled_first)
                    )

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Run the model's ordinary forward, keeping what each covered layer's tangent needs
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
                self.calls[module].append(_Call(kept, kept._version if kept is not None else 0, saved))
                return out

            return forward

        with _patched_forwards(self.modules, recorder):
            yield

    def jvp(
        self,
        params: Sequence[torch.Tensor],
        tangents: Sequence[torch.Tensor],
        buffers: dict[torch.Tensor, torch.Tensor],
        x: torch.Tensor,
    ) -> torch.Tensor:
        """J t at the recorded forward: the model's output tangent for tangents ``tangents`` of the
        model's parameters ``params``. ``buffers`` maps the model's buffers to stand-ins (a
        train-mode forward updates them)."""

        def replayer(module: nn.Module) -> Callable:
            rule = RULES[type(module)]

            def forward(x_dual: torch.Tensor) -> torch.Tensor:
                if not self.calls[module]:
                    raise RuntimeError(f"the tangent pass called {module} more often than the base forward did")
                call = self.calls[module].popleft()
                if call is None:
                    return type(module).forward(module, x_dual)
                primal, t_in = _primal_tangent(x_dual)
                recorded = rule.recorded_input(call.saved)
                if recorded is not None:
                    _check_same_input(module, primal, recorded)
                out = call.out if call.intact() else rule.output(module, primal, call.saved)
                tangent = rule.tangent(module, out, call.saved, t_in)
                return rule.returned(module, fwAD.make_dual(out, tangent) if tangent is not None else out, call.saved)

            return forward

        def sequential_replayer(seq: nn.Module) -> Callable:
            children, chains = list(seq), self.chains[seq]

            def forward(x: torch.Tensor) -> torch.Tensor:
                i = 0
                while i < len(children):
                    chain = chains.get(i)
                    if chain is not None and self._chain_ready(chain):
                        x = self._replay_chain(chain, x)
                        i += len(chain)
                    else:  # a call that no rule applied to, or a kept output changed: one by one
                        x = children[i](x)
                        i += 1
                return x

            return forward

        with (
            torch.no_grad(),
            fwAD.dual_level(),
            _patched_forwards(self.modules, replayer),
            _patched_forwards(list(self.chains), sequential_replayer),
        ):
            duals = {p: fwAD.make_dual(p.detach(), t) for p, t in zip(params, tangents)}
            with replaced(self.model, {**duals, **buffers}):
                out = self.model(x)
            tangent = fwAD.unpack_dual(out).tangent
        leftover = [m for m in self.modules if self.calls[m]]
        if leftover:
            raise RuntimeError(f"the tangent pass skipped calls the base forward made to {leftover[0]}")
        return tangent if tangent is not None else torch.zeros_like(out)

    def _chain_ready(self, chain: tuple[nn.Module, ...]) -> bool:
        """Every child's next call was recorded by a rule, with the outputs the chain reads intact."""
        for module in chain:
            queue = self.calls[module]
            if not queue or queue[0] is None or (self.keeps_output[module] and not queue[0].intact()):
                return False
        return True

    def _replay_chain(self, chain: tuple[nn.Module, ...], x_dual: torch.Tensor) -> object:
        primal, tangent = _primal_tangent(x_dual)
        calls = [self.calls[m].popleft() for m in chain]
        recorded = RULES[type(chain[0])].recorded_input(calls[0].saved)
        if recorded is not None:
            _check_same_input(chain[0], primal, recorded)
        i = 0
        while i < len(chain):
            module, call, rule = chain[i], calls[i], RULES[type(chain[i])]
            if module in self.pooled_first:
                # pool(act(z)) takes act(z) at the argmax: gather first, then the derivative at
                # the pooled output, which is act(z) there.
                pool = calls[i + 1]
                if tangent is not None:
                    tangent = rule.tangent(module, pool.out, call.saved, _gather_pooled(tangent, pool.saved))
                i += 2
            else:
                tangent = rule.tangent(module, call.out, call.saved, tangent)
                i += 1
        last = calls[-1]
        dual = fwAD.make_dual(last.out, tangent) if tangent is not None else last.out
        return RULES[type(chain[-1])].returned(chain[-1], dual, last.saved)


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
