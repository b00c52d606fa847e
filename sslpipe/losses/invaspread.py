"""The InvaSpread loss (Ye, Zhang, Yuen, Chang, CVPR 2019, https://arxiv.org/abs/1904.03436):
invariant to augmentation, spread out over instances, within the batch.

Follows `BatchCriterion` in mangye16/Unsupervised_Embedding_Learning (BatchAverage.py), line by
line: over the 2B features of the two views, p_ij = exp(f_i . f_j / T) for j != i (the diagonal
zeroed), the row sum Z_i = sum_{j != i} p_ij (with negM != 1: (Z_i - p_i,pos) * negM + p_i,pos),
P_ij = p_ij / Z_i, and

    loss = -1/(2B) sum_i [ log P_i,pos(i) + negM * sum_{j not in {i, pos(i)}} log(1 - P_ij) ].

The official multiplies by the *detached* features on the right (`x.t().data`,
`reordered_x.data`): the gradient reaches each anchor's row only, never the columns. Kept here.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sslpipe import distributed


def batch_criterion(f1: Tensor, f2: Tensor, temperature: float, neg_m: float = 1.0) -> tuple[Tensor, int]:
    """The probabilistic in-batch instance loss of InvaSpread.

    Args:
        f1, f2: (N, D) embeddings of the two views on this process, row i of both from the same
            image; L2-normalized here (the official network ends in an L2 normalization). Any
            dtype; the loss is computed in float32.
        temperature: T (0.1, `--batch-t`).
        neg_m: the official `negM` (`--batch-m`, 1 by default): the weight of the negatives in
            the row sum and in the loss; >= 1 (below 1 a negative can outweigh the row sum, and
            log(1 - P) is undefined, in the official code too).

    Returns:
        (loss, candidates): the scalar mean over this process's 2N anchors, and the number of
        columns, 2*N*W.

    Several processes: the columns are every process's features, gathered *without* gradient
    (`sslpipe.distributed.gather`), the anchors are the local 2N. Since the official loss has no
    gradient through the columns, this is exact: the mean of the processes' losses is the
    single-process loss on the global batch, and DDP's gradient average its gradient.
    """
    if f1.ndim != 2 or f1.shape != f2.shape:
        raise ValueError(f"batch_criterion expects two (N, D) tensors of one shape, got {tuple(f1.shape)} "
                         f"and {tuple(f2.shape)}")
    n = f1.shape[0]
    with torch.autocast(device_type=f1.device.type, enabled=False):
        f1 = F.normalize(f1.float(), dim=1)
        f2 = F.normalize(f2.float(), dim=1)
        # Columns [view 1 of ranks 0..W-1 | view 2 of ranks 0..W-1], N*W rows each, no gradient.
        all1, all2 = distributed.gather(f1), distributed.gather(f2)
        total = all1.shape[0]
        columns = torch.cat([all1, all2])  # (2NW, D)
        anchors = torch.cat([f1, f2])  # (2N, D)
        local = torch.arange(n, device=f1.device) + distributed.rank() * n
        own = torch.cat([local, local + total])  # each anchor's own column
        partner = torch.cat([local + total, local])  # its other view

        rows = torch.arange(2 * n, device=f1.device)
        logits = anchors @ columns.t() / temperature  # log of the official's all_prob, (2N, 2NW)
        # In log space: the official's exp(s / T) overflows float32 from T < 1/88 on, and its
        # log(1 - P_pos) subtraction is inf - inf when P_pos rounds to 1. The same values otherwise.
        # Row sum Z_i over j != i, the negatives weighted by negM: logsumexp with log(negM) added.
        weighted = logits + math.log(neg_m) if neg_m != 1 else logits
        weighted = weighted.index_put((rows, partner), logits[rows, partner])
        log_z = torch.logsumexp(weighted.index_put((rows, own), logits.new_full((), float("-inf"))), dim=1)
        log_p = logits - log_z[:, None]  # log P_ij
        log_pos = log_p[rows, partner]
        # sum_j log(1 - P_ij) over the negatives. The official sums every column (the zeroed
        # diagonal adds log 1 = 0) and then subtracts log(1 - P_pos): here the diagonal and the
        # positive are P = 0 before the log (so their backward has no 0 / 0 either).
        off = logits.new_full((), float("-inf"))
        log_neg = log_p.index_put((rows, own), off).index_put((rows, partner), off)
        neg = torch.log1p(-torch.exp(log_neg))
        loss = -(log_pos.sum() + neg_m * neg.sum()) / (2 * n)
    return loss, columns.shape[0]
