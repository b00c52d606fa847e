"""The MoCo v3 contrastive loss (Chen, Xie, He 2021, https://arxiv.org/abs/2104.02057).

Follows `MoCo.contrastive_loss` in facebookresearch/moco-v3 (moco/builder.py): the keys of the
whole batch, gathered from every process without gradient, are the candidates; each query's
positive is its own image's key; the cross-entropy is scaled by 2T.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from sslpipe import distributed


def moco_v3_ctr(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """ctr(q, k) = CE(q . all_gather(k)^T / T, arange(N) + N * rank) * 2T.

    Args:
        q: (N, D) queries of this process (the online encoder's predictor outputs); L2-normalized
            here.
        k: (N, D) keys of the other view from the momentum encoder, row i from the same image as
            q[i]; L2-normalized and detached here, then gathered from every process in rank order
            (`sslpipe.distributed.gather`, no gradient: only the queries learn by gradient).
        temperature: T (1.0 for ResNet-50, 0.2 for ViT in the official configs).

    Returns:
        The scalar mean over the N local queries, in float32. MoCo v3's loss is
        `moco_v3_ctr(q1, k2, T) + moco_v3_ctr(q2, k1, T)`. Under DDP each process's loss covers its
        own queries against the keys of the global batch; DDP's gradient average is then the
        gradient of the single-process loss on the global batch (the keys are constants).
    """
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"moco_v3_ctr expects q and k of one (N, D) shape, got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    n = q.shape[0]
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        keys = distributed.gather(F.normalize(k.detach().float(), dim=1))  # (W*N, D)
        logits = q @ keys.t() / temperature  # (N, W*N)
        labels = torch.arange(n, device=q.device) + n * distributed.rank()
        return F.cross_entropy(logits, labels) * (2 * temperature)
