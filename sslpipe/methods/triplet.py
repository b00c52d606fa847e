"""The truncated triplet loss (Wang et al., "Solving Inefficiency of Self-supervised Representation
Learning", ICCV 2021, https://arxiv.org/abs/2104.08760): BYOL's online and target networks with a
triplet loss over the local batch in place of BYOL's regression: each prediction is pulled to its
target projection and pushed from a "deputy" negative, the mean of its 2nd..10th closest targets.

As wanggrun/triplet (openselfsup/models/triplet.py, heads/triplet_loss_head.py,
hooks/triplet_hook.py, configs/selfsup/triplet/): each step resizes (bilinear, align_corners
False) every online input to a random square side in 96..224 and every target input to one in
128..224, four sizes drawn independently (online view 1, online view 2, target view 1, target
view 2); loss = head(online v1, target v2) + head(online v2, target v1), each a mean over the
local batch (no gathering across processes); EMA momentum 0.99 cosine to 1, moved after the step.
The official code draws the sizes with NumPy's global generator; here they come from the step's
seed and index, the same on every process (GlobalBatchNorm2d needs one shape on every rank) and
after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sslpipe import distributed, seeds
from sslpipe.losses import triplet_loss
from sslpipe.methods.base import Step
from sslpipe.methods.byol import BYOL, BYOLConfig
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class TripletConfig(BYOLConfig):
    momentum: float = 0.99
    last_bias: bool = True          # the official neck and predictor (NonLinearNeckSimCLR, with_bias)
    # Which negatives make the deputy, by rank among a row's negatives (1 = closest):
    # truncated: the mean of ranks negatives_from..negatives_to (the official 2..10);
    # rank_k: the k-th closest (the paper's rank-k);
    # smoothed_rank_k: the mean of ranks k - smoothing .. k + smoothing (our reading of the paper's
    #   smoothing around rank k; k=6, smoothing=4 is the official 2..10);
    # median: the median negative (the official head's commented-out variant).
    variant: Literal["truncated", "rank_k", "smoothed_rank_k", "median"] = "truncated"
    negatives_from: int = 2
    negatives_to: int = 10
    k: int = 2
    smoothing: int = 4
    gamma: float = 2.0              # weight of the positive distance
    margin: float = 100.0           # of the ranking loss: every sample stays active
    online_sizes: tuple[int, int] = (96, 224)   # each step's random square side, both ends included
    target_sizes: tuple[int, int] = (128, 224)

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.negatives_from <= self.negatives_to:
            raise ValueError(f"negatives_from and negatives_to must satisfy 1 <= negatives_from <= "
                             f"negatives_to, got {self.negatives_from} and {self.negatives_to}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 (1 = the closest negative), got {self.k}")
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {self.smoothing}")
        if self.variant == "smoothed_rank_k" and self.k - self.smoothing < 1:
            raise ValueError(f"smoothed_rank_k averages ranks k - smoothing .. k + smoothing: k ({self.k}) "
                             f"must be > smoothing ({self.smoothing})")
        if self.gamma < 0 or self.margin < 0:
            raise ValueError(f"gamma and margin must be >= 0, got {self.gamma} and {self.margin}")
        for name in ("online_sizes", "target_sizes"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 1 <= low <= high, got {[low, high]}")

    def ranks(self, n: int) -> tuple[int, int]:
        """(first, last) ranks of the negatives averaged, for a local batch of `n`."""
        if self.variant == "truncated":
            return self.negatives_from, self.negatives_to
        if self.variant == "rank_k":
            return self.k, self.k
        if self.variant == "smoothed_rank_k":
            return self.k - self.smoothing, self.k + self.smoothing
        # torch.median of the n - 1 negatives: the lower middle one, index (n - 2) // 2 sorted.
        return n // 2, n // 2


class Triplet(BYOL):
    """BYOL with the truncated triplet loss and the per-step random input sizes."""

    Config = TripletConfig

    def __init__(self, backbone, config: TripletConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone, config, global_batch=global_batch, samples=samples)
        local = global_batch // distributed.world_size()
        last = config.ranks(local)[1]
        if last > local - 1:
            field = {"truncated": "negatives_to", "rank_k": "k"}.get(config.variant, "k + smoothing")
            raise ValueError(f"the loss averages negatives up to rank {last} (method.{field}), but a batch "
                             f"of {local} per process (data.batch_size={global_batch}) has only "
                             f"{local - 1} negatives per image: lower it or raise the batch")

    def sizes(self, step: Step) -> tuple[list[int], list[int]]:
        """This step's square sides: ([online view 1, online view 2], [target view 1, target view 2]).
        Python ints from a host generator seeded by (seed, step): no device sync, the same on every
        process and after a resume."""
        rng = np.random.default_rng(seeds.derive(step.seed, step.index, "triplet_resize"))
        (a, b), (c, d) = self.config.online_sizes, self.config.target_sizes
        online = [int(s) for s in rng.integers(a, b + 1, size=2)]
        return online, [int(s) for s in rng.integers(c, d + 1, size=2)]

    def branch_inputs(self, batch: Batch, step: Step) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        online, target = self.sizes(step)
        return ([_resize(x, s) for x, s in zip(batch.views, online)],
                [_resize(x, s) for x, s in zip(batch.views, target)])

    def objective(self, p: list[torch.Tensor], targets: list[torch.Tensor]):
        c = self.config
        ranks = c.ranks(p[0].shape[0])
        loss1, ap1, an1 = triplet_loss(p[0], targets[1], ranks, c.gamma, c.margin)
        loss2, ap2, an2 = triplet_loss(p[1], targets[0], ranks, c.gamma, c.margin)
        metrics = {"d_ap": 0.5 * (ap1.mean() + ap2.mean()), "d_an": 0.5 * (an1.mean() + an2.mean())}
        return loss1 + loss2, metrics


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), bilinear as the official F.interpolate (align_corners
    False, no antialiasing); a view already of that size is returned as it is (the same values)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
