"""torch.optim.SGD's update, written out so that autograd can differentiate through it.

The arithmetic mirrors torch.optim.SGD's single-tensor path operation for operation (same ops,
same order, same ``alpha`` arguments), so with the same gradients it gives the same floats:
an AdaLFL run with a frozen loss reproduces a plain ``torch.optim.SGD`` run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass(frozen=True)
class SGDHyper:
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    maximize: bool = False

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer) -> "SGDHyper":
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"the meta-gradient engine differentiates torch.optim.SGD, got {type(optimizer).__name__}")
        if len(optimizer.param_groups) != 1:
            raise ValueError("the meta-gradient engine expects one parameter group")
        group = optimizer.param_groups[0]
        lr = group["lr"]
        return cls(
            lr=float(lr),
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            nesterov=bool(group["nesterov"]),
            weight_decay=float(group["weight_decay"]),
            maximize=bool(group.get("maximize", False)),
        )


@dataclass
class SGDStep:
    params: list[torch.Tensor]  # theta_{t+1}
    buffers: list[Optional[torch.Tensor]]  # momentum buffers after the step
    directions: list[torch.Tensor]  # D with theta_{t+1} = theta_t - lr * D
    grad_scales: list[float]  # dD/dg: how strongly the fresh gradient enters D (momentum, Nesterov)


def sgd_update(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    buffers: Sequence[Optional[torch.Tensor]],
    hyper: SGDHyper,
    lr: Optional[torch.Tensor] = None,
) -> SGDStep:
    """One SGD step, out of place and differentiable. ``lr`` (a tensor) replaces ``hyper.lr`` when
    the learning rate itself is being meta-learned."""
    sign = -1.0 if hyper.maximize else 1.0
    step = SGDStep([], [], [], [])
    for param, grad, buf in zip(params, grads, buffers):
        d_p = -grad if hyper.maximize else grad
        scale = sign
        if hyper.weight_decay != 0:
            d_p = d_p.add(param, alpha=hyper.weight_decay)
        if hyper.momentum != 0:
            if buf is None:
                buf = d_p  # torch starts the buffer as a copy of the first step direction
                buf_scale = 1.0
            else:
                buf = buf.mul(hyper.momentum).add(d_p, alpha=1 - hyper.dampening)
                buf_scale = 1 - hyper.dampening
            if hyper.nesterov:
                d_p = d_p.add(buf, alpha=hyper.momentum)
                scale = sign * (1 + hyper.momentum * buf_scale)
            else:
                d_p = buf
                scale = sign * buf_scale
        new = param.add(d_p, alpha=-hyper.lr) if lr is None else param - lr * d_p
        if new.stride() != param.stride():
            # Keep the parameter's memory layout. For a single-input-channel conv weight NHWC and
            # NCHW are the same shape with different strides, and add() picks NCHW; the look-ahead
            # forward would then run NCHW (with copies and slower pooling) on a channels_last model.
            new = torch.empty_like(param).copy_(new)
        step.params.append(new)
        step.buffers.append(buf)
        step.directions.append(d_p)
        step.grad_scales.append(scale)
    return step
