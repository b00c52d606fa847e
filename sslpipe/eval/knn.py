"""Weighted k-nearest-neighbour classification of frozen features.

The monitor of InstDisc (Wu et al. 2018, https://arxiv.org/abs/1805.01978) as DINO's
`knn_classifier` computes it: cosine similarities between each test feature and every train
feature, the k most similar train samples vote for their class with weight exp(sim / T), and
the class scores are the sums of the votes. No training, so it tracks pretraining cheaply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslpipe.errors import SslpipeError
from sslpipe.eval.features import Features, extract_features
from sslpipe.eval.metrics import accuracy

SMALL_TRAIN_SET = 10_000


def default_k(num_train: int) -> int:
    """k = 200 (InstDisc, for ImageNet's 1.28M images), or 20 (DINO's default) when the train set
    has fewer than 10,000 samples: with a few hundred samples per class, 200 neighbours reach far
    into other classes and blur the vote."""
    return 20 if num_train < SMALL_TRAIN_SET else 200


def knn_classify(train_features: Tensor, train_labels: Tensor, test_features: Tensor, *, k: int = 200,
                 temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> Tensor:
    """Class scores of the test samples by weighted kNN vote.

    Args:
        train_features: (N, D) features of the labelled samples (any scale: L2-normalized here).
        train_labels: (N,) class indices in [0, num_classes).
        test_features: (M, D) features to classify.
        k: neighbours per test sample; clipped to N.
        temperature: T in the vote weight exp(cos / T) (0.07 as in InstDisc and DINO).
        num_classes: C; default `train_labels.max() + 1`.
        chunk: test rows per step, bounding memory to (chunk, N) similarities at a time.

    Returns:
        (M, C) float32 scores on the features' device: the summed weights of each class's votes.
    """
    if (train_features.ndim != 2 or test_features.ndim != 2
            or train_features.shape[1] != test_features.shape[1]):
        raise SslpipeError(f"kNN needs (N, D) train and (M, D) test features, got "
                           f"{tuple(train_features.shape)} and {tuple(test_features.shape)}")
    if train_labels.shape != train_features.shape[:1]:
        raise SslpipeError(f"kNN needs one train label per train feature: {train_labels.shape[0]} labels "
                           f"for {train_features.shape[0]} features")
    if train_features.shape[0] == 0:
        raise SslpipeError("kNN needs at least one train sample")
    for name, value in (("k", k), ("chunk", chunk)):
        if value < 1:
            raise SslpipeError(f"{name} must be >= 1, got {value}")
    if not temperature > 0:
        raise SslpipeError(f"temperature must be > 0, got {temperature}")
    device = train_features.device
    labels = train_labels.to(device, torch.long)
    if labels.min() < 0:
        raise SslpipeError("kNN train labels must be >= 0 (unlabeled samples, label -1, cannot vote)")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    elif labels.max() >= num_classes:
        raise SslpipeError(f"a train label is {int(labels.max())}, outside num_classes={num_classes}")

    # float32 whatever the features' dtype: exp(1 / 0.07) ~ 1.6e6 overflows float16, and bf16
    # similarities would reorder close neighbours.
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.to(device, torch.float32), dim=1)
    k = min(k, train.shape[0])
    scores = torch.zeros(test.shape[0], num_classes, device=device)
    for start in range(0, test.shape[0], chunk):
        similarity = test[start:start + chunk] @ train.T                 # (m, N)
        top_similarity, top_index = similarity.topk(k, dim=1)           # (m, k)
        votes = (top_similarity / temperature).exp()
        scores[start:start + chunk].scatter_add_(1, labels[top_index], votes)
    return scores


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 *, k: int = 200, temperature: float = 0.07, num_classes: int | None = None,
                 chunk: int = 1024) -> dict[str, float]:
    """`{"top1", "top5"}` in percent of `knn_classify` against (M,) `test_labels`; top5 only when
    C >= 5. `num_classes` defaults to the largest label of either set + 1."""
    if test_labels.shape != test_features.shape[:1]:
        raise SslpipeError(f"kNN needs one test label per test feature: {test_labels.shape[0]} labels "
                           f"for {test_features.shape[0]} features")
    if num_classes is None and len(test_labels) and len(train_labels):
        num_classes = max(int(train_labels.max()), int(test_labels.max())) + 1
    scores = knn_classify(train_features, train_labels, test_features, k=k, temperature=temperature,
                          num_classes=num_classes, chunk=chunk)
    return accuracy(scores, test_labels)


def knn_result(train: Features, val: Features, *, k: int | None = None, temperature: float = 0.07) -> dict:
    """Weighted kNN of `val`'s features against `train`'s: {"top1", "top5", "k"} in percent."""
    k = k or default_k(len(train.keys))
    return {**knn_accuracy(train.features, train.labels, val.features, val.labels, k=k,
                           temperature=temperature), "k": k}


def knn_evaluation(backbone: nn.Module, train: str, val: str, *, pipeline: str = "eval",
                   size: int | None = None, k: int | None = None, temperature: float = 0.07,
                   batch_size: int = 256, device="cpu") -> dict:
    """Weighted kNN of `val` against `train` (labelled shards): {"top1", "top5", "k"}, in percent."""
    extract = dict(spec=pipeline, size=size, batch_size=batch_size, device=device)
    train_features = extract_features(backbone, train, **extract, desc="kNN memory")
    val_features = extract_features(backbone, val, **extract, desc="kNN queries")
    return knn_result(train_features, val_features, k=k, temperature=temperature)
