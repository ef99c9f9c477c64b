"""Meta-gradient engines. One call does a training iteration's meta-learning work:

    step = engine.step(model, optimizer, loss_fn, meta_params, train_batch, val_batch, task_loss)
    # step.meta_grads = d L_T(y_val, f_{theta_{t+1}}(x_val)) / d meta_params
    engine.commit(model, optimizer, step)   # theta_{t+1} *is* the base update

where theta_{t+1} is one step of the real base optimiser (torch.optim.SGD with its current
scheduled lr, momentum, Nesterov, weight decay) on ``loss_fn``. The meta parameters reach
theta_{t+1} through ``loss_fn`` (a learned loss's phi) and/or through ``lr`` (a meta-learned
learning rate, a tensor). Both backends give the same numbers by different routes:

* ``func`` (default): forward-mode AD, and forwards at other parameters through
  ``adalfl.meta.stateless.replaced`` (functional_call's idea). theta_{t+1} depends on phi only
  through s = dM_phi/df at the training outputs f, and enters as theta - lr*c*J^T s (J the
  model's Jacobian, c the momentum/Nesterov factor). Hence
      dL/dphi = d/dphi < J (-lr c v), s_phi >   with v = dL/dtheta_{t+1},
  one Jacobian-vector product of the model (forward mode) and one more differentiation of the tiny
  loss network only. No second-order pass through the model; the product reuses the base
  forward's activations (``adalfl.meta.tangent``) instead of running the forward again, and an
  output-wise loss hands over s with its derivative already carried through its forward pass
  (``value_and_output_gradient``), so phi's graph is differentiated once. Exact.
* ``higher``: the ``higher`` library's patched model and differentiable SGD, differentiating
  through the base step's backward pass (create_graph=True). Independent, used to cross-check.

The training-batch forward is the real base step's forward, so BatchNorm running statistics move
exactly once per iteration, as in plain training; every other forward leaves them untouched.
Dropout masks are replayed so the Jacobian-vector product sees the same network as the base step.
Layers without a tangent rule run as ordinary forward-mode AD inside the same pass.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from adalfl.config import choice
from adalfl.meta.sgd import SGDHyper, sgd_update
from adalfl.meta.stateless import replaced
from adalfl.meta.tangent import ForwardRecord

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MetaStep:
    params: list[torch.Tensor]  # theta_{t+1}, detached, in model.parameters() order
    buffers: list[Optional[torch.Tensor]]  # momentum buffers after the step, detached
    base_grads: list[torch.Tensor]  # the base gradient that made the step, detached
    base_loss: torch.Tensor
    output: torch.Tensor  # the model's output on the training batch, detached
    target: torch.Tensor
    meta_loss: torch.Tensor  # L_T at theta_{t+1} on the validation batch, detached
    meta_grads: list[torch.Tensor]

    @classmethod
    def detached(cls, params, buffers, base_grads, base_loss, output, target, meta_loss, meta_grads) -> "MetaStep":
        """A MetaStep holding no graph: what the look-ahead produced, cut loose from autograd."""
        return cls(
            params=[p.detach() for p in params],
            buffers=[b.detach() if b is not None else None for b in buffers],
            base_grads=[g.detach() for g in base_grads],
            base_loss=base_loss.detach(),
            output=output.detach(),
            target=target,
            meta_loss=meta_loss.detach(),
            meta_grads=list(meta_grads),
        )


def _momentum_buffers(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Optional[torch.Tensor]]:
    return [optimizer.state.get(p, {}).get("momentum_buffer") for p in model.parameters()]


def _cloned_buffers(model: nn.Module) -> dict[torch.Tensor, torch.Tensor]:
    """Each of the model's buffers -> a copy: the copies absorb the running-statistics update of a
    train-mode forward that is not a base step."""
    return {buf: buf.clone() for buf in model.buffers()}


def _zeros_for_unused(grads: Sequence[Optional[torch.Tensor]], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _loss_and_output_gradient(
    loss_fn: LossFn, output: torch.Tensor, target: torch.Tensor, on_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """M(output) and s = dM/d output, s kept on the meta parameters' graph when ``on_graph``.
    A loss that can write s out (``value_and_output_gradient``: the output-wise losses) saves
    differentiating a backward pass; any other loss goes through autograd."""
    explicit = getattr(loss_fn, "value_and_output_gradient", None)
    if on_graph and explicit is not None:
        return explicit(output, target)
    leaf = output.requires_grad_()
    loss = loss_fn(leaf, target)
    (s,) = torch.autograd.grad(loss, leaf, create_graph=on_graph)
    return loss, s


class MetaEngine(ABC):
    name: str = ""

    @abstractmethod
    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        meta_params: Sequence[torch.Tensor],
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        task_loss: LossFn,
        lr: Optional[torch.Tensor] = None,
        loss_has_meta_params: bool = True,
    ) -> MetaStep:
        """Look ahead one base step and return the meta-gradient (see the module docstring).
        ``lr`` replaces the scheduled learning rate; ``loss_has_meta_params=False`` says the
        meta parameters reach theta_{t+1} only through ``lr``."""

    @staticmethod
    @torch.no_grad()
    def commit(model: nn.Module, optimizer: torch.optim.Optimizer, step: MetaStep) -> None:
        """Write theta_{t+1} and the new momentum buffers into the model and optimiser."""
        momentum = optimizer.param_groups[0]["momentum"] != 0
        for param, new, buf in zip(model.parameters(), step.params, step.buffers):
            param.copy_(new)
            if momentum:
                optimizer.state[param]["momentum_buffer"] = buf


class _RngReplay:
    """Remembers the RNG state before the base step's forward so a later forward can draw the
    same dropout masks, then puts the generator back where it was."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def replay(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        devices = [self.device] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
            return fn()


class FuncEngine(MetaEngine):
    name = "func"

    def __init__(self) -> None:
        # One ForwardRecord per model, reused every step (finding its layers walks the model).
        self._records: weakref.WeakKeyDictionary[nn.Module, ForwardRecord] = weakref.WeakKeyDictionary()

    def _record(self, model: nn.Module) -> ForwardRecord:
        if model not in self._records:
            self._records[model] = ForwardRecord(model)
        return self._records[model]

    def step(self, model, optimizer, loss_fn, meta_params, train, val, task_loss, lr=None, loss_has_meta_params=True):
        hyper = SGDHyper.from_optimizer(optimizer)
        params = list(model.parameters())
        x, y = train
        rng = _RngReplay(x.device)

        # Base step: the real forward (moves BatchNorm statistics once), s = dM/df kept on phi's
        # graph, and the base gradient J^T s by an ordinary backward pass.
        record = self._record(model)  # what the tangent pass below reuses (not needed for lr alone)
        with record.recording() if loss_has_meta_params else nullcontext():
            output = model(x)
        base_loss, s = _loss_and_output_gradient(loss_fn, output.detach(), y, loss_has_meta_params)
        base_grads = torch.autograd.grad(output, params, grad_outputs=s.detach())
        with torch.no_grad():
            buffers = _momentum_buffers(model, optimizer) if hyper.momentum else [None] * len(params)
            update = sgd_update(params, base_grads, buffers, hyper, lr.detach() if lr is not None else None)

        # v = dL_T/dtheta_{t+1} on the validation batch.
        new_params = [p.detach().requires_grad_() for p in update.params]
        x_val, y_val = val
        with replaced(model, {**dict(zip(params, new_params)), **_cloned_buffers(model)}):
            val_out = model(x_val)
        meta_loss = task_loss(val_out, y_val)
        v = torch.autograd.grad(meta_loss, new_params)

        # A surrogate whose gradient with respect to the meta parameters is dL_T/dmeta.
        surrogate = torch.zeros((), device=x.device)
        if loss_has_meta_params:
            step_lr = float(lr.detach()) if lr is not None else hyper.lr
            if len(set(update.grad_scales)) == 1:  # J is linear: scale its output once, not every tangent
                tangents, output_scale = list(v), -step_lr * update.grad_scales[0]
            else:
                tangents, output_scale = [vi * (-step_lr * c) for vi, c in zip(v, update.grad_scales)], 1.0
            jv = rng.replay(lambda: record.jvp(params, tangents, _cloned_buffers(model), x)) * output_scale
            surrogate = surrogate + (jv * s).sum()
        if lr is not None:
            dl_dlr = -sum((vi * d).sum() for vi, d in zip(v, update.directions))
            surrogate = surrogate + lr * dl_dlr.detach()
        meta_grads = torch.autograd.grad(surrogate, meta_params, allow_unused=True)
        return MetaStep.detached(
            update.params,
            update.buffers,
            base_grads,
            base_loss,
            output,
            y,
            meta_loss,
            _zeros_for_unused(meta_grads, meta_params),
        )


class HigherEngine(MetaEngine):
    name = "higher"

    def step(self, model, optimizer, loss_fn, meta_params, train, val, task_loss, lr=None, loss_has_meta_params=True):
        import higher

        SGDHyper.from_optimizer(optimizer)  # same preconditions as FuncEngine
        fmodel = higher.monkeypatch(model, copy_initial_weights=False, track_higher_grads=True)
        diffopt = higher.optim.get_diff_optim(
            optimizer,
            model.parameters(),
            fmodel=fmodel,
            override={"lr": [lr]} if lr is not None else None,
            track_higher_grads=True,
        )
        params = list(model.parameters())
        x, y = train
        output = fmodel(x, params=params)
        base_loss = loss_fn(output, y)
        base_grads: list[torch.Tensor] = []
        new_params = diffopt.step(base_loss, params=params, grad_callback=lambda g: base_grads.extend(g) or g)  # type: ignore[func-returns-value]
        # higher's patched model works on copies of the buffers: hand the base step's BatchNorm
        # update to the model; the meta forward below only moves the (discarded) copies.
        with torch.no_grad():
            patched = dict(fmodel.named_buffers())
            for name, buf in model.named_buffers():
                buf.copy_(patched[name])
        x_val, y_val = val
        meta_loss = task_loss(fmodel(x_val, params=new_params), y_val)
        meta_grads = torch.autograd.grad(meta_loss, meta_params, allow_unused=True)
        state = diffopt.state[0]
        momenta = [state[i].get("momentum_buffer") for i in range(len(params))]
        return MetaStep.detached(
            new_params, momenta, base_grads, base_loss, output, y, meta_loss, _zeros_for_unused(meta_grads, meta_params)
        )


class Backend(str, Enum):
    """``method.meta.backend``: which engine computes the meta-gradient."""

    func = "func"  # FuncEngine: forward-mode AD (torch.func's idea)
    higher = "higher"  # HigherEngine: the ``higher`` library, to cross-check


ENGINES: dict[Backend, type[MetaEngine]] = {Backend.func: FuncEngine, Backend.higher: HigherEngine}


def make_engine(backend: Backend | str) -> MetaEngine:
    return ENGINES[choice(Backend, backend, "method.meta.backend")]()
