"""Linear probe on precomputed frozen features ("fast mode": no augmentation, no backbone pass).

The protocol of MoCo v3 (Chen et al. 2021, https://arxiv.org/abs/2104.02057): SGD with momentum
0.9, lr 0.1 * batch / 256 on a cosine schedule, no weight decay, the classifier's weights drawn
from N(0, 0.01) and its bias zero. As in MAE's probe (He et al. 2021, appendix A.2), the features
first pass a BatchNorm without affine parameters: feature scales differ by orders of magnitude
between methods and layers, and standardizing them lets one learning rate fit all. It is still a
linear probe: a fixed per-dimension standardization folds into the linear layer after training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslpipe.errors import SslpipeError
from sslpipe.eval.metrics import accuracy
from sslpipe.optim.schedules import warmup_cosine

EVAL_CHUNK = 8192


def linear_probe(train_features: Tensor, train_labels: Tensor, val_features: Tensor, val_labels: Tensor, *,
                 num_classes: int, epochs: int = 100, batch_size: int = 256, lr: float | None = None,
                 weight_decay: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Train `BatchNorm1d(D, affine=False) -> Linear(D, C)` on frozen features; report accuracies.

    Args:
        train_features, val_features: (N, D) and (M, D) features (computed on the features' device,
            in float32).
        train_labels, val_labels: (N,) and (M,) class indices in [0, num_classes).
        epochs: passes over the train features; the cosine schedule spans all their steps.
        batch_size: samples per step (capped at N); a trailing batch of one sample is skipped,
            since batch normalization cannot standardize a single sample.
        lr: default 0.1 * batch_size / 256.
        seed: the classifier's initialization and the per-epoch shuffles; the same seed gives the
            same result.

    Returns:
        `{"top1", "top5", "train_top1", "epochs"}`: validation and train accuracies in percent
        (`top5` only when C >= 5) and the number of epochs trained.
    """
    _check(train_features, train_labels, "train", num_classes)
    _check(val_features, val_labels, "val", num_classes)
    if train_features.shape[1] != val_features.shape[1]:
        raise SslpipeError(f"train features have {train_features.shape[1]} dimensions, val features "
                           f"{val_features.shape[1]}")
    if train_features.shape[0] < 2:
        raise SslpipeError("the linear probe needs at least 2 train samples (batch normalization)")
    for name, value, minimum in (("num_classes", num_classes, 2), ("epochs", epochs, 1),
                                 ("batch_size", batch_size, 2)):
        if value < minimum:
            raise SslpipeError(f"{name} must be >= {minimum}, got {value}")
    if lr is None:
        lr = 0.1 * batch_size / 256
    if not lr > 0 or not weight_decay >= 0:
        raise SslpipeError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")

    device = train_features.device
    x, y = train_features.float(), train_labels.to(device, torch.long)
    n, dim = x.shape
    batch_size = min(batch_size, n)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on every device
    # momentum=None keeps the exact average of the batch statistics: the features are frozen, so the
    # average over all steps estimates the train set's statistics better than a recent-weighted one.
    standardize = nn.BatchNorm1d(dim, affine=False, eps=1e-6, momentum=None)
    # skip_init: nn.Linear's own initialization would draw from (and advance) the global RNG.
    probe = nn.Sequential(standardize, nn.utils.skip_init(nn.Linear, dim, num_classes))
    with torch.no_grad():
        probe[1].weight.normal_(0.0, 0.01, generator=generator)
        probe[1].bias.zero_()
    probe.to(device)

    steps_per_epoch = n // batch_size + (n % batch_size > 1)
    schedule = warmup_cosine(lr, 0.0, epochs * steps_per_epoch)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            if len(batch) < 2:
                continue
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[step])
            loss = F.cross_entropy(probe(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

    probe.eval()
    result = accuracy(_logits(probe, val_features.to(device)), val_labels.to(device))
    result["train_top1"] = accuracy(_logits(probe, x), y, ks=(1,))["top1"]
    result["epochs"] = epochs
    return result


def _check(features: Tensor, labels: Tensor, split: str, num_classes: int) -> None:
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise SslpipeError(f"the linear probe needs (N, D) {split} features and (N,) labels, got "
                           f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if len(labels) == 0:
        raise SslpipeError(f"no {split} samples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise SslpipeError(f"{split} labels must lie in [0, num_classes={num_classes}), found "
                           f"{int(labels.min())}..{int(labels.max())}")


@torch.no_grad()
def _logits(probe: nn.Module, features: Tensor) -> Tensor:
    """(M, C) logits; in chunks, so that a float32 copy of the features is (chunk, D), not (M, D)."""
    return torch.cat([probe(features[start:start + EVAL_CHUNK].float())
                      for start in range(0, len(features), EVAL_CHUNK)])
