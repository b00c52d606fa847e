"""InvaSpread (Ye, Zhang, Yuen, Chang, CVPR 2019, https://arxiv.org/abs/1904.03436): invariant
and spreading instance features, learned within the batch. Two views of each image in one
forward, a linear embedding, and the probabilistic loss of `batch_criterion`; no projection MLP,
no memory bank, no momentum encoder.

Follows mangye16/Unsupervised_Embedding_Learning (demo_seen.py, models/resnet_cifar.py): the
backbone's pooled features -> Linear(num_features, 128) with bias -> L2 normalization, on the
concatenated 2N batch (one BN batch over both views).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from sslpipe.losses import batch_criterion
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.views import ViewsNeeded
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class InvaSpreadConfig:
    temperature: float = 0.1        # --batch-t (the README: 0.05-0.1)
    dim: int = 128                  # --low-dim: the embedding after the Linear
    neg_m: float = 1.0              # --batch-m: the negatives' weight (negM of BatchCriterion)

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not self.neg_m >= 1:  # below 1 a negative can outweigh the row sum: log(1 - P) of P > 1
            raise ValueError(f"neg_m must be >= 1, got {self.neg_m}")


class InvaSpread(Method):
    Config = InvaSpreadConfig

    def __init__(self, backbone, config: InvaSpreadConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        self.head = nn.Linear(backbone.num_features, config.dim)  # the official `linear` (with bias)

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=2, same_size=True, why="the two views of an image are encoded as one "
                                                        "batch, each the other's positive")

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: two (N, 3, H, W) views of the same images."""
        f = F.normalize(self.head(self.backbone(batch.concat((0, 1)))), dim=1)  # (2N, D), as torch.cat
        f1, f2 = f.chunk(2)
        loss, candidates = batch_criterion(f1, f2, self.config.temperature, self.config.neg_m)
        return StepOutput(loss, {"candidates": float(candidates), **health_metrics(f1)})
