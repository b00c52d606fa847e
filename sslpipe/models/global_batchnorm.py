"""Global BatchNorm: the statistics of the whole batch across processes, without a host sync.

SimCLR normalises with the global batch ("global BN", Chen et al. 2020, arXiv:2002.05709,
Sec. 2.3), as do SwAV and SimSiam with torch's SyncBatchNorm. SyncBatchNorm gathers every
rank's count and reads it on the host (torch/nn/modules/_functions.py), one stall of the GPU
queue per layer and step, because it allows batches of different sizes. With equal batches on
every rank the global count is known from the shapes, and the statistics are two per-channel
sums all-gathered on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from sslpipe import distributed
from sslpipe.models.split_batchnorm import SplitBatchNorm2d


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the concatenation of every process's batch: (N, C, ...) -> (N, C, ...),
    statistics over every dimension but the channels' (1).

    Contract, not checked (checking would read sizes from the other ranks on the host): every
    rank passes a batch of the same, non-zero size N, and every rank runs each forward and its
    backward (they are collectives, as with SyncBatchNorm). With W ranks the layer then computes
    exactly what torch's BatchNorm computes on the (W*N, C, ...) concatenation: outputs, gradients
    (the backward sums, over ranks, each rank's loss's gradient through the shared statistics),
    and the running statistics (unbiased variance with the global count, W*N*H*W in 2d, `momentum`
    or the cumulative average when it is None, `num_batches_tracked`), identical on every rank.

    In training with `torch.distributed` initialised and W > 1: per-channel sums of x and x**2 in
    float32, all-gathered with gradient (`sslpipe.distributed.gather_with_grad`), give the global
    mean and biased variance (E[x**2] - E[x]**2, a one-pass formula: it loses digits only when
    |mean| is many orders above the standard deviation); then one `x * scale + shift` pass. The
    input dtype is kept (bf16 under autocast, statistics in float32, as BatchNorm does) and so is
    its memory format (channels_last). Otherwise (eval, one process): torch's BatchNorm forward
    on the local batch (so eval without running statistics uses the local batch, as SyncBatchNorm).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = distributed.world_size()
        if not self.training or world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.size(1)
        count = x.numel() // channels * world  # from shapes: no host read of a device value
        dims = (0, *range(2, x.ndim))  # all but the channels
        shape = (1, channels) + (1,) * (x.ndim - 2)
        # Autocast off: it would cast x to float32 for `sum` and `vector_norm` (its float32 list)
        # and keep that copy for the backward; given `dtype=`, the reductions accumulate in
        # float32 straight from x. The norm's square is the sum of squares (its backward saves x).
        with torch.autocast(x.device.type, enabled=False):
            local = torch.stack([x.sum(dim=dims, dtype=torch.float32),
                                 torch.linalg.vector_norm(x, dim=dims, dtype=torch.float32).square()])
            sums = distributed.gather_with_grad(local.unsqueeze(0)).sum(0)  # (W, 2, C) -> (2, C)
            mean = sums[0] / count
            var = (sums[1] / count - mean.square()).clamp_min(0.0)  # rounding can take it below 0
            scale = torch.rsqrt(var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight
            shift = -mean * scale
            if self.bias is not None:
                shift = shift + self.bias
            out = torch.addcmul(shift.view(shape), x, scale.view(shape))
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * (count / (count - 1)))
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # BatchNorm reads num_batches_tracked on the host for the cumulative average (momentum
        # None); a device tensor factor does the same without it.
        factor = self.num_batches_tracked.reciprocal() if self.momentum is None else self.momentum
        for running, batch in ((self.running_mean, mean), (self.running_var, unbiased_var)):
            running.mul_(1 - factor).add_(batch * factor)


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """Global BatchNorm of (N, C, H, W) batches: the backbones' (`_GlobalBatchNorm`)."""


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    """Global BatchNorm of (N, C) or (N, C, L) batches: the heads' (`_GlobalBatchNorm`)."""


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d and BatchNorm1d replaced by a GlobalBatchNorm2d or 1d, as
    `nn.SyncBatchNorm.convert_sync_batchnorm` does: the same parameter and buffer objects (an
    optimizer built before still holds them), `requires_grad` and training mode kept. A
    SplitBatchNorm2d (MoCo's one-process stand-in for shuffle-BN) is left as it is."""
    for torch_class, global_class in (nn.BatchNorm2d, GlobalBatchNorm2d), (nn.BatchNorm1d, GlobalBatchNorm1d):
        if isinstance(module, torch_class) and not isinstance(module, (SplitBatchNorm2d, _GlobalBatchNorm)):
            converted = global_class(module.num_features, eps=module.eps, momentum=module.momentum,
                                     affine=module.affine, track_running_stats=module.track_running_stats,
                                     device="meta")
            for name in ("weight", "bias"):
                setattr(converted, name, getattr(module, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(converted, name, getattr(module, name))
            converted.train(module.training)
            return converted
    for name, child in module.named_children():
        setattr(module, name, convert_global_batchnorm(child))
    return module
