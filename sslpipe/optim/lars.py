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
    such a step a plain SGD step (`lr * g`, which is 0 for a zero gradient).

    How it is computed: per parameter group (and device and dtype), a fixed handful of
    `torch._foreach_*` ops over all its parameters, not a Python loop of small ops per tensor (on
    CUDA each foreach op is one or a few multi_tensor_apply launches, about 30 for a ResNet-50
    step instead of about 1,100). The norms are stacked to (P,) tensors and the trust ratios
    chosen with `torch.where` on the device, so nothing is read back to the host: no
    synchronisation, whatever the values. On the CPU the foreach ops run per tensor and the
    results are bitwise those of the per-parameter loop; on CUDA `_foreach_norm` sums in another
    order than `vector_norm`, so the trust ratios may differ from a per-tensor computation in the
    last bit or so.

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
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                # The fused (multi_tensor_apply) foreach kernels need one device and dtype per list.
                buckets.setdefault((p.device, p.dtype), []).append(p)
            for params in buckets.values():
                self._update(params, group)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """The step of `params` (one device and dtype, all with a gradient), in a few foreach ops."""
        momentum = group["momentum"]
        grads = [p.grad for p in params]
        if group["lars_exclude"]:
            g = grads
        else:
            weight_decay = group["weight_decay"]
            g = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay != 0.0 else grads
            w_norm = torch.stack(torch._foreach_norm(params))  # (P,)
            g_norm = torch.stack(torch._foreach_norm(g))
            # The division's inf/nan (a zero norm) lands only in the branch not taken; min > 0 is
            # "both > 0", nan included (nan > 0 is false).
            trust = torch.where(torch.minimum(w_norm, g_norm) > 0, group["eta"] * w_norm / g_norm, 1.0)
            g = torch._foreach_mul(g, _broadcast_per_tensor(trust, g))

        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, g)
        update = torch._foreach_add(g, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_add_(params, update, alpha=-group["lr"])


def _broadcast_per_tensor(values: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """values (P,) -> P tensors shaped (and strided) like `like`, tensor i filled with values[i].

    Why materialise: a foreach op over tensors of different shapes takes a per-tensor factor only
    as a host scalar (`ScalarList`, a sync to read) or as a tensor of the same size and strides;
    a list of 0-dim tensors or of stride-0 expands sends CUDA to the per-tensor slow path (one
    launch per tensor, ATen/native/ForeachUtils.h `check_fast_path_restrictions`). One `cat` of
    stride-0 expands writes all P fills (CUDA's cat batches 64 such inputs per launch): one extra
    write and read of the elements, against P launches.
    """
    sizes = [t.numel() for t in like]
    flat = torch.cat([v.expand(n) for v, n in zip(values.unbind(), sizes)])
    out, offset = [], 0
    for t, n in zip(like, sizes):
        # A segment holds one value, so any layout of it will do: take the tensor's own strides
        # where they span exactly n elements (contiguous, channels_last) so that the lists match
        # for the fused kernel; any other layout gets contiguous strides (and the slow path).
        dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
        stride = t.stride() if dense else torch.empty(t.shape, device="meta").stride()
        out.append(flat.as_strided(t.shape, stride, offset))
        offset += n
    return out
