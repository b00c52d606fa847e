"""SwAV: Sinkhorn-Knopp codes and the swapped prediction loss (Caron et al. 2020,
https://arxiv.org/abs/2006.09882).

Both follow facebookresearch/swav, main_swav.py (`distributed_sinkhorn` and the loss in `train`).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sslpipe import distributed


@torch.no_grad()
def sinkhorn(scores: Tensor, eps: float = 0.05, iterations: int = 3) -> Tensor:
    """Equipartitioned soft assignments of the global batch to the prototypes.

    Args:
        scores: (B, K) this rank's prototype scores (cosines) of one crop; any dtype.
        eps: entropy regularisation; Q is proportional to exp(scores / eps).
        iterations: Sinkhorn-Knopp iterations (prototype rows, then sample columns).

    Returns:
        (B, K) float32 codes without gradient; each row sums to 1 and, as the iterations
        converge, each prototype receives B*W/K of the global batch (B/K of a rank's rows on
        average). The row and prototype sums run over all W ranks (total batch B*W).
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn expects (B, K) scores, got {tuple(scores.shape)}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        logits = scores.detach().float() / eps
        # exp(1 / 0.05) = 4.9e8 overflows fp16 (max 65504), and larger scores overflow even fp32,
        # so: float32, and subtract the maximum over the GLOBAL batch. A constant factor
        # exp(-max) cancels in the first normalisation (Q /= sum Q), so the codes are the
        # official ones; it must be the same constant on every rank, hence the all-reduce.
        top = distributed.all_reduce_max_(logits.max())
        q = torch.exp(logits - top).t()  # (K, B), the paper's layout
        k, b = q.shape[0], q.shape[1] * distributed.world_size()

        q /= distributed.all_reduce_sum_(q.sum())  # the whole matrix sums to 1
        for _ in range(iterations):
            # Each prototype (row) gets a total weight of 1/K over the global batch ...
            q /= distributed.all_reduce_sum_(q.sum(dim=1, keepdim=True))
            q /= k
            # ... then each sample (column, all local) a total of 1/B.
            q /= q.sum(dim=0, keepdim=True)
            q /= b
        q *= b  # columns sum to 1: every sample's code is a distribution over prototypes
        return q.t()


def swapped_prediction(scores: Sequence[Tensor], codes: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """Predict each assigned crop's code from every other crop's scores.

    Args:
        scores: one (B, K) tensor of prototype scores per crop, global crops first.
        codes: one (B, K) code per assigned crop (the global crops; SwAV assigns 2); codes[i]
            belongs to crop i. Detached here (the codes are targets).
        temperature: T in softmax(scores / T) (0.1).

    Returns:
        Scalar float32 loss, as in the official code:
        mean over assigned crops i of mean over crops v != i of
        -mean_b sum_k codes[i][b, k] * log_softmax(scores[v] / T)[b, k].
    """
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(f"swapped_prediction needs >= 2 crops and 1..{len(scores)} codes, got "
                         f"{len(scores)} crops and {len(codes)} codes")
    with torch.autocast(device_type=scores[0].device.type, enabled=False):
        log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
        loss = scores[0].new_zeros((), dtype=torch.float32)
        for i, code in enumerate(codes):
            code = code.detach().float()
            subloss = sum(-(code * log_p[v]).sum(dim=1).mean() for v in range(len(scores)) if v != i)
            loss = loss + subloss / (len(scores) - 1)
        return loss / len(codes)
