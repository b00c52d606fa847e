"""Negative cosine similarity with stop-gradient, the SimSiam loss (Chen & He 2021,
https://arxiv.org/abs/2011.10566).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) = -mean_i cos(p_i, stopgrad(z_i)).

    Args:
        p: (N, D) predictor outputs of one view.
        z: (N, D) projections of the other view. Detached here: the stop-gradient is what keeps
            SimSiam from collapsing, so it belongs to the loss, not to the caller.

    Returns:
        Scalar in [-1, 1], in float32. SimSiam's symmetric loss is
        0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1)).
    """
    if p.shape != z.shape:
        raise ValueError(f"negative_cosine expects p and z of one shape, got {tuple(p.shape)} and "
                         f"{tuple(z.shape)}")
    with torch.autocast(device_type=p.device.type, enabled=False):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()
