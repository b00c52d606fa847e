"""Split BatchNorm: BN statistics over `splits` sub-batches, to imitate several GPUs on one.

MoCo's key encoder must not see the statistics of the whole batch its queries saw, or it
"cheats" through BN (He et al. 2020, Sec. 3.3); with one process, shuffle-BN across GPUs is
impossible and this layer takes its place, as in the official one-GPU CIFAR demo. The state
dict is a BatchNorm2d's, so weights export unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if self.momentum is None or not self.track_running_stats:
            raise ValueError("SplitBatchNorm2d needs running statistics with a momentum")
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) with N divisible by `splits`; sample n falls in split n % splits."""
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.splits:
            raise ValueError(f"SplitBatchNorm2d: batch {n} is not divisible by splits={self.splits}")
        mean, var = self.running_mean.repeat(self.splits), self.running_var.repeat(self.splits)
        # (N, C) -> (N/S, S*C): channel s*C+c of row j is channel c of sample j*S+s.
        out = F.batch_norm(x.reshape(n // self.splits, self.splits * c, h, w), mean, var,
                           *(None if p is None else p.repeat(self.splits) for p in (self.weight, self.bias)),
                           True, self.momentum, self.eps).reshape(n, c, h, w)
        with torch.no_grad():  # the running statistics are the mean over splits
            self.running_mean.copy_(mean.view(self.splits, c).mean(0))
            self.running_var.copy_(var.view(self.splits, c).mean(0))
            self.num_batches_tracked += 1
        return out


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """`module` with every BatchNorm2d replaced by a SplitBatchNorm2d holding the same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batchnorm(child, splits)
    return module
