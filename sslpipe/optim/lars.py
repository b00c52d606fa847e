"""LARS: layer-wise adaptive rate scaling (You, Gitman and Ginsburg 2017, arXiv:1708.03888).

The large-batch optimizer of SimCLR, BYOL and MoCo v3 (SwAV's LARC is the same idea). Every
parameter tensor ("layer") gets its own step size: the global learning rate times a trust ratio
eta * ||w|| / ||g||, so that each step changes a layer by about eta of its norm whatever the
scale of its gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum, L2 weight decay and the LARS trust ratio.

    For a parameter `w` with gradient `grad`, in a group with learning rate `lr`, momentum `m`,
    weight decay `wd` and coefficient `eta`::

        g     = grad + wd * w
        trust = eta * ||w|| / ||g||   if ||w|| > 0 and ||g|| > 0, else 1.0
        v     = m * v + trust * g                  (v starts at 0; state["momentum_buffer"])
        w     = w - lr * v                         (nesterov: w - lr * (trust * g + m * v))

    Convention, learning rate outside the momentum buffer: this is BYOL's official
    implementation (deepmind-research `byol/utils/optimizers.py`: `add_weight_decay`, then
    `scale_by_lars` accumulating `mu = momentum * mu + trust * g`, then `optax.scale(-lr)`), and
    also MoCo v3's and Barlow Twins' PyTorch LARS, SwAV's apex LARC + SGD and `torch.optim.SGD`.
    SimCLR's TF optimizer (google-research/simclr `lars_optimizer.py`, `classic_momentum=True`)
    puts the learning rate inside the buffer instead (`v = m * v + lr * trust * g; w -= v`). With
    a constant learning rate the two are the same algorithm (SimCLR's buffer is exactly `lr` times
    this one); they differ only in how a learning-rate change reaches the momentum already
    accumulated: here it applies at once to the whole buffer, which is what a per-step schedule
    written into `group["lr"]` (see `sslpipe.optim.param_groups.apply_schedule`) expects, and it
    keeps `momentum_buffer` meaning what it means in `torch.optim.SGD`.

    Why 1.0 when a norm is zero (the rule of both official implementations): a zero weight
    (a zero-initialised layer or BN gamma) would otherwise get trust 0 and never move from 0,
    and a zero gradient would give 0/0 = nan or x/0 = inf, and nan times a zero gradient is
    still nan, which would poison the weights and the momentum buffer. Falling back to 1.0 makes
    such a step a plain SGD step (`lr * g`, which is 0 for a zero gradient). The choice is made
    with `torch.where` on device tensors, so there is no host synchronisation per parameter.

    Parameter groups may set `lars_exclude=True` (biases and normalisation weights, see
    `sslpipe.optim.param_groups`): those parameters get neither weight decay nor the trust ratio,
    i.e. exactly `torch.optim.SGD(momentum=m, weight_decay=0)`. Parameters whose `.grad` is None
    are skipped (no state is created for them, as in torch's SGD). The momentum buffers live in
    `self.state`, so `state_dict()` / `load_state_dict()` resume training exactly.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
    ):
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if momentum < 0.0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if eta <= 0.0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if nesterov and momentum <= 0.0:
            raise ValueError("nesterov requires momentum > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        nesterov=nesterov, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; returns `closure()` when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            weight_decay, eta = group["weight_decay"], group["eta"]
            nesterov, exclude = group["nesterov"], group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                g = p.grad
                if not exclude:
                    if weight_decay != 0.0:
                        g = g.add(p, alpha=weight_decay)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    # The division's inf/nan (a zero norm) lands only in the branch not taken.
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust

                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf.mul_(momentum).add_(g)
                update = g.add(buf, alpha=momentum) if nesterov else buf
                p.add_(update, alpha=-lr)
        return loss
