"""The losses of the memory-bank methods, InstDisc (Wu et al. 2018, https://arxiv.org/abs/1805.01978)
and CMC (Tian et al. 2020, https://arxiv.org/abs/1906.05849): noise-contrastive estimation against
sampled bank rows, and the non-parametric softmax (over sampled rows, or over the whole bank).

Follows zhirongw/lemniscate.pytorch (`lib/NCEAverage.py`, `lib/NCECriterion.py`,
`lib/LinearAverage.py`) and HobbitLong/CMC (`NCE/NCEAverage.py`, `NCE/NCECriterion.py`).

    scores = bank_scores(features, bank(rows))              # (B, K+1): column 0 the sample's own row
    z = nce_normalizer(scores, 0.07, samples)               # once, on the first batch; then kept
    loss = nce_loss(scores, 0.07, z, samples)               # or bank_softmax(scores, 0.07)
"""

import torch
import torch.nn.functional as F
from torch import Tensor

# lemniscate's and CMC's NCECriterion: added to the denominators.
EPS = 1e-7


def bank_scores(features: Tensor, rows: Tensor) -> Tensor:
    """(B, D) features and (B, K+1, D) bank rows -> (B, K+1) inner products in float32 (the rows are
    constants: the bank learns by its momentum update, not by gradient)."""
    if features.ndim != 2 or rows.ndim != 3 or rows.shape[0] != features.shape[0] \
            or rows.shape[2] != features.shape[1]:
        raise ValueError(f"bank_scores expects features (B, D) and rows (B, K+1, D), got "
                         f"{tuple(features.shape)} and {tuple(rows.shape)}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        return torch.bmm(rows.detach().float(), features.float().unsqueeze(2)).squeeze(2)


def nce_normalizer(scores: Tensor, temperature: float, samples: int) -> Tensor:
    """Z = mean(exp(s / T)) x N over every entry of `scores` (B, K+1), a 0-dim float32 tensor without
    gradient: the Monte-Carlo estimate of the partition function that the reference computes on its
    first batch and keeps for the rest of training (`params[2]`)."""
    with torch.autocast(device_type=scores.device.type, enabled=False):
        return torch.exp(scores.detach().float() / temperature).mean() * samples


def nce_loss(scores: Tensor, temperature: float, z: Tensor, samples: int) -> Tensor:
    """NCE with a uniform noise distribution P_n = 1/N and m = K noise samples per positive.

    Args:
        scores: (B, K+1) inner products of L2-normalized features with bank rows, column 0 each
            sample's own row (the positive), the others K rows drawn uniformly (the noise).
        temperature: T (0.07).
        z: the normalizing constant (0-dim tensor or float), a constant: no gradient flows through it.
        samples: N, the bank's rows.

    Returns:
        Scalar, float32: -(1/B) sum_i [log h(P_i0) + sum_{k>=1} log (1 - h(P_ik))], with
        P = exp(s/T) / Z and h(P) = P / (P + K/N), as `NCECriterion`
        (log D1 = log P/(P + K P_n + eps), log D0 = log K P_n / (P + K P_n + eps)).
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"nce_loss expects (B, K+1) scores with K >= 1, got {tuple(scores.shape)}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        k = scores.shape[1] - 1
        noise = k / samples  # K * P_n
        z = z.detach().float() if isinstance(z, Tensor) else z
        p = torch.exp(scores.float() / temperature) / z
        log_d1 = torch.log(p[:, 0] / (p[:, 0] + noise + EPS))
        log_d0 = torch.log(noise / (p[:, 1:] + noise + EPS))
        return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


def bank_softmax(scores: Tensor, temperature: float, target: Tensor | None = None) -> Tensor:
    """The non-parametric softmax: CE(scores / T, target), float32, the mean over the B rows.

    `scores` (B, C): against the positive and K sampled rows (target None: column 0, CMC's
    `NCESoftmaxLoss`, InstDisc's updated model with 65,536 negatives), or against every bank row
    (`target` the (B,) sample indices: lemniscate's `--nce-k 0`, `LinearAverage` + CrossEntropyLoss).
    """
    if scores.ndim != 2:
        raise ValueError(f"bank_softmax expects (B, C) scores, got {tuple(scores.shape)}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        if target is None:
            target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores.float() / temperature, target)
