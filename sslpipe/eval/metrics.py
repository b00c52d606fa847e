"""Top-k accuracy, the one metric every evaluation protocol reports."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sslpipe.errors import SslpipeError


def accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent: `{"top1": ..., "top5": ...}`.

    Args:
        logits: (M, C) scores, higher is better.
        labels: (M,) class indices.
        ks: the k's to report; a k larger than C is left out (top5 of a 3-class problem is always
            100%, which would only mislead).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise SslpipeError(f"accuracy needs (M, C) logits and (M,) labels, got {tuple(logits.shape)} "
                           f"and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise SslpipeError("accuracy of an empty set: there are no labels to compare with")
    ks = [k for k in ks if k <= logits.shape[1]]
    if not ks:
        return {}
    top = logits.topk(max(ks), dim=1).indices                       # (M, max k)
    hits = top == labels.to(top.device, torch.long)[:, None]        # (M, max k); at most one True per row
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}
