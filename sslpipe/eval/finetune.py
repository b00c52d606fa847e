"""Semi-supervised evaluation (SimCLR, Sec. 6; "efficient classification"): fine-tune the whole
pretrained backbone with a linear classifier on a small class-balanced labelled subset (1%, 10%)
of the training set, then measure top-1 on the held-out split."""

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
                    eval_pipeline: str = "eval", device="cpu") -> dict:
    """Fine-tune a copy of `backbone` + a linear head on `fraction` of the labelled train shards.

    `train` holds the train split's labels and keys (from feature extraction); the subset is drawn
    from them (`balanced_subset`) and copied to temporary shards. SGD with Nesterov momentum 0.9,
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
        loader = ViewLoader(pipeline, pattern, batch_size, device=device, seed=seed)
        steps = epochs * len(loader)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        model.train()
        step = 0
        for epoch in tqdm(range(epochs), desc=f"fine-tuning on {fraction:.0%}", unit="epoch", leave=False):
            loader.set_epoch(epoch)
            for batch in loader:
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = F.cross_entropy(model(batch.views[0]).float(), batch.labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
    scores, labels = _predict(model, val_shards, eval_pipeline, device)
    return {**accuracy(scores, labels), "labelled": len(keys), "fraction": fraction, "epochs": epochs}


@torch.no_grad()
def _predict(model: nn.Module, shards: str, pipeline: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    scores, labels = [], []
    for batch in ViewLoader(pipeline, shards, 256, device=device, train=False):
        if batch.labels.numel():
            scores.append(model(batch.views[0]).float().cpu())
            labels.append(batch.labels.cpu())
    return torch.cat(scores), torch.cat(labels)
