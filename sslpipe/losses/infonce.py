"""InfoNCE with a queue of negatives, the MoCo v2 loss (He et al. 2020,
https://arxiv.org/abs/1911.05722; Chen et al. 2020, https://arxiv.org/abs/2003.04297).

Follows `MoCo.forward` in facebookresearch/moco (builder.py).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of picking each query's key among the key and the queue.

    Args:
        q: (N, D) queries from the online encoder; L2-normalized here.
        k: (N, D) keys from the momentum encoder; L2-normalized and detached here (stop-grad:
            only the query encoder learns by gradient, the key encoder by EMA).
        queue: (K, D) earlier keys, rows already L2-normalized; detached here.
        temperature: T (0.2 for MoCo v2).

    Returns:
        Scalar mean over the N queries of CE([q.k, q.queue^T] / T, label 0), in float32.
    """
    if q.ndim != 2 or q.shape != k.shape or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"info_nce expects q, k (N, D) and queue (K, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(queue.shape)}")
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        negative = q @ queue.detach().float().t()  # (N, K)
        logits = torch.cat([positive, negative], dim=1) / temperature
        # The positive sits in column 0 of every row.
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)
