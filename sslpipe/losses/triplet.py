"""The truncated triplet loss (Wang et al., "Solving Inefficiency of Self-supervised Representation
Learning", ICCV 2021, https://arxiv.org/abs/2104.08760).

Follows `TripletLossHead.forward` in wanggrun/triplet (openselfsup/models/heads/triplet_loss_head.py):
p = normalize(prediction), t = normalize(target projection), distances d = -2 p t^T (N x N, smaller
is closer); the positive distance is d_ii; the negatives d_ij (j != i) are sorted closest first and
the negative distance is the mean of ranks 2..10 (`topk(10, largest=False)[1:].mean()`: the
closest one is dropped as a likely false negative); then `MarginRankingLoss(margin=100)(d_an,
gamma * d_ap, 1)` with gamma = 2, i.e. mean_i max(0, gamma d_ap_i - d_an_i + margin). The official
head loops over rows in Python; here one `topk` over the masked matrix gives the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def triplet_loss(p: Tensor, t: Tensor, ranks: tuple[int, int] = (2, 10), gamma: float = 2.0,
                 margin: float = 100.0) -> tuple[Tensor, Tensor, Tensor]:
    """The triplet loss of one direction over the local batch.

    Args:
        p: (N, D) online predictions of one view; L2-normalized here.
        t: (N, D) target projections of the other view; L2-normalized and detached here (the
            target network learns by EMA only).
        ranks: (first, last), 1-based and inclusive: the negative distance of row i is the mean of
            its negatives ranked first..last, closest first (the official (2, 10); (k, k) is the
            paper's rank-k variant). Needs last <= N - 1.
        gamma: weight of the positive distance (2).
        margin: of the ranking loss (100: with distances in [-2, 2] every sample stays active,
            so the loss is linear in the distances).

    Returns:
        (loss, d_ap, d_an): the scalar mean over the N rows of max(0, gamma d_ap - d_an + margin)
        in float32, and the detached (N,) positive and negative distances (for metrics).
    """
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"triplet_loss expects p and t of one (N, D) shape, got {tuple(p.shape)} and "
                         f"{tuple(t.shape)}")
    first, last = ranks
    n = p.shape[0]
    if not 1 <= first <= last <= n - 1:
        raise ValueError(f"triplet_loss: negative ranks {first}..{last} need 1 <= first <= last <= N - 1 "
                         f"= {n - 1} (the negatives of a batch of {n})")
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = F.normalize(p.float(), dim=1)
        t = F.normalize(t.detach().float(), dim=1)
        d = -2.0 * p @ t.t()                                               # (N, N)
        d_ap = d.diagonal()
        # The positive pushed behind every negative, so that topk's `last` smallest are negatives.
        diagonal = torch.eye(n, dtype=torch.bool, device=d.device)
        closest = torch.topk(d.masked_fill(diagonal, float("inf")), last, dim=1, largest=False).values
        d_an = closest[:, first - 1:].mean(dim=1)
        loss = F.relu(gamma * d_ap - d_an + margin).mean()
    return loss, d_ap.detach(), d_an.detach()
