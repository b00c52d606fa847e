"""Frozen backbone features of every image in a set of shards, through an evaluation pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from sslpipe import distributed
from sslpipe.pipeline.loader import ViewLoader


@dataclass
class Features:
    """(N, D) float32 features on the CPU, their (N,) int64 labels, global sample indices and keys,
    in the order of the index (row i is sample i when every sample of the shards is there)."""

    features: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    keys: list[str]


@torch.no_grad()
def extract_features(backbone: nn.Module, shards, *, spec: str = "eval", size: int | None = None,
                     batch_size: int = 256, device: str | torch.device = "cpu",
                     num_threads: int | None = None, desc: str = "features") -> Features:
    """Run `backbone` (in eval mode) over every image of `shards` once, centre-cropped by `spec`
    (rescaled to `size` when given).

    With several processes each reads its part (no sample twice, none dropped) and the result,
    gathered and sorted by global sample index, is the same on every process and for any number
    of them.
    """
    loader = ViewLoader(spec, shards, batch_size, device=device, train=False, num_threads=num_threads,
                        size=size)
    was_training = backbone.training
    backbone.eval()
    features, labels, index, keys = [], [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=distributed.rank() != 0):
        if batch.size:  # an evaluation batch may be empty on some ranks
            features.append(backbone(batch.views[0]).float().cpu())
            labels.append(batch.labels.cpu())
            index.append(batch.index.cpu())
            keys.extend(batch.keys)
    backbone.train(was_training)
    parts = [Features(torch.cat(features), torch.cat(labels), torch.cat(index), keys)] if keys else []
    if distributed.world_size() > 1:
        from accelerate.utils import gather_object  # objects: the parts differ in length

        parts = gather_object(parts)
    return _by_index(parts)


def _by_index(parts: list[Features]) -> Features:
    """One `Features` sorted by global index: the same order whatever the number of processes."""
    index = torch.cat([p.index for p in parts])
    order = index.argsort()
    keys = [k for p in parts for k in p.keys]
    features, labels = torch.cat([p.features for p in parts]), torch.cat([p.labels for p in parts])
    return Features(features[order], labels[order], index[order], [keys[i] for i in order.tolist()])
