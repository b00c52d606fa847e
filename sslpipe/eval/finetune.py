"""Evaluations that train through the pipeline's augmented views: semi-supervised fine-tuning
(SimCLR, Sec. 6: the whole backbone and a linear classifier on a small class-balanced labelled
subset, 1% or 10%) and the augmented linear probe (frozen backbone), each measured by top-1 on
the held-out split."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sslpipe.eval.features import Features
from sslpipe.eval.metrics import accuracy
from sslpipe.eval.subsets import balanced_subset, write_subset_shards
from sslpipe.pipeline.loader import ViewLoader


def finetune_subset(backbone: nn.Module, train_shards: str, train: Features, val_shards: str, *,
                    fraction: float, num_classes: int, epochs: int = 30, batch_size: int = 256,
                    lr: float | None = None, seed: int = 0, pipeline: str = "finetune",
                    eval_pipeline: str = "eval", size: int | None = None, device="cpu") -> dict:
    """Fine-tune a copy of `backbone` + a linear head on `fraction` of the labelled train shards.

    `train` holds the train split's labels and keys (from feature extraction); the subset is drawn
    from them (`balanced_subset`) and copied to temporary shards; `size` rescales both specs. SGD
    with Nesterov momentum 0.9,
    lr 0.05 x batch/256 (SimCLR's fine-tuning rate), cosine to 0, no weight decay. Returns
    {"top1", "top5", "labelled": subset size, "fraction", "epochs"}.
    """
    indices = balanced_subset(train.labels, fraction, seed)
    keys = {train.keys[i] for i in indices}
    model = nn.Sequential(copy.deepcopy(backbone), nn.Linear(backbone.num_features, num_classes)).to(device)
    batch_size = min(batch_size, len(keys))  # a 1% subset of a small set is smaller than a batch
    lr = lr if lr is not None else 0.05 * batch_size / 256
    with tempfile.TemporaryDirectory(prefix="sslpipe-subset-") as tmp:
        pattern = write_subset_shards(train_shards, keys, Path(tmp), name="subset")
        _train(model, model.parameters(), pattern, pipeline=pipeline, size=size, epochs=epochs,
               batch_size=batch_size, lr=lr, seed=seed, device=device, desc=f"fine-tuning on {fraction:.0%}")
    scores, labels = _predict(model, val_shards, eval_pipeline, size, device)
    return {**accuracy(scores, labels), "labelled": len(keys), "fraction": fraction, "epochs": epochs}


def augmented_linear_probe(backbone: nn.Module, train_shards: str, val_shards: str, *, num_classes: int,
                           epochs: int = 100, batch_size: int = 256, lr: float | None = None, seed: int = 0,
                           pipeline: str = "finetune", eval_pipeline: str = "eval", size: int | None = None,
                           device="cpu") -> dict:
    """The linear probe with training augmentation (random crops and flips, MoCo's protocol): the
    frozen backbone (eval mode: its BN statistics stay) runs on every batch, and only a linear
    classifier behind a non-affine BatchNorm learns; SGD momentum 0.9, lr 0.1 x batch/256,
    cosine. Slower than `linear.linear_probe` on precomputed features, closer to the papers."""
    frozen = copy.deepcopy(backbone).requires_grad_(False)
    head = nn.Sequential(nn.BatchNorm1d(backbone.num_features, affine=False),
                         nn.Linear(backbone.num_features, num_classes))
    model = nn.Sequential(frozen, head).to(device)
    lr = lr if lr is not None else 0.1 * batch_size / 256
    _train(model, head.parameters(), train_shards, pipeline=pipeline, size=size, epochs=epochs,
           batch_size=batch_size, lr=lr, seed=seed, device=device, desc="linear probe", nesterov=False,
           frozen=frozen)
    scores, labels = _predict(model, val_shards, eval_pipeline, size, device)
    return {**accuracy(scores, labels), "epochs": epochs}


def _train(model: nn.Module, parameters, shards: str, *, pipeline: str, size: int | None, epochs: int,
           batch_size: int, lr: float, seed: int, device, desc: str, nesterov: bool = True,
           frozen: nn.Module | None = None):
    """Cross-entropy training of `parameters` over `epochs` of augmented views, cosine lr to 0."""
    loader = ViewLoader(pipeline, shards, batch_size, device=device, seed=seed, size=size)
    steps = epochs * len(loader)
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=nesterov)
    model.train()
    if frozen is not None:
        frozen.eval()
    step = 0
    for epoch in tqdm(range(epochs), desc=desc, unit="epoch", leave=False):
        loader.set_epoch(epoch)
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(model(batch.views[0]).float(), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1


@torch.no_grad()
def _predict(model: nn.Module, shards: str, pipeline: str, size: int | None,
             device) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    scores, labels = [], []
    for batch in ViewLoader(pipeline, shards, 256, device=device, train=False, size=size):
        if batch.size:
            scores.append(model(batch.views[0]).float().cpu())
            labels.append(batch.labels.cpu())
    return torch.cat(scores), torch.cat(labels)
