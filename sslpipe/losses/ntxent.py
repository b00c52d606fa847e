"""NT-Xent, the SimCLR loss (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

Follows `add_contrastive_loss` in the official TF code (google-research/simclr, objective.py):
both views' projections are gathered from every rank with gradient, each local anchor is
contrasted with all 2*N*W views except itself, and the two directions are summed.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from sslpipe import distributed


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, int]:
    """Normalized-temperature cross-entropy over the global batch.

    Args:
        z1, z2: (N, D) projections of the two views on this rank; row i of z1 and of z2 come
            from the same image. Any dtype; the loss is computed in float32.
        temperature: T in exp(cos / T) (0.1 on ImageNet, 0.5 on CIFAR).

    Returns:
        (loss, candidates): the scalar loss of this rank's 2N anchors, and the number of
        columns of the similarity matrix, 2*N*W (the positive, 2*N*W - 2 negatives and the
        masked self-similarity), so a caller can check the negatives span all ranks.

    loss = CE(z1 anchors) + CE(z2 anchors), each a mean over the N local anchors: the official
    code sums `loss_a + loss_b` rather than averaging them, which matters for the learning rate
    (a mean would halve the gradient). Under DDP each rank's loss covers its own anchors; the
    gathered views receive gradient from every rank's loss, and DDP's gradient averaging then
    yields the gradient of the mean over ranks, i.e. of the single-process loss on the global
    batch.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"nt_xent expects two (N, D) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    n = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = F.normalize(z1.float(), dim=1)
        z2 = F.normalize(z2.float(), dim=1)
        # Gathered layout: [z1 of rank 0..W-1 | z2 of rank 0..W-1], each block N*W rows.
        all1 = distributed.gather_with_grad(z1)
        all2 = distributed.gather_with_grad(z2)
        total = all1.shape[0]  # N * W
        candidates = torch.cat([all1, all2], dim=0)  # (2NW, D)
        anchors = torch.cat([z1, z2], dim=0)  # (2N, D)
        # Only the local anchors' rows: (2N, 2NW) instead of the full (2NW, 2NW) matrix.
        logits = anchors @ candidates.t() / temperature

        local = torch.arange(n, device=z1.device) + distributed.rank() * n
        own = torch.cat([local, local + total])  # each anchor's own column
        partner = torch.cat([local + total, local])  # z1[i] <-> z2[i]
        # The self-similarity (always 1/T) is no candidate; the official code subtracts 1e9. The
        # -inf is filled on the device: a tensor made of it on the host would be a blocking copy.
        rows = torch.arange(2 * n, device=z1.device)
        logits = logits.index_put((rows, own), logits.new_full((), float("-inf")))

        loss = (F.cross_entropy(logits[:n], partner[:n])
                + F.cross_entropy(logits[n:], partner[n:]))
    return loss, candidates.shape[0]
