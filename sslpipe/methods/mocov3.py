"""MoCo v3 (Chen, Xie, He 2021, https://arxiv.org/abs/2104.02057), the ResNet variant: no queue,
each view's queries against the other view's keys from a momentum encoder, the keys of the
whole batch (every process's) as the candidates, symmetric, the loss scaled by 2T.

Follows `MoCo_ResNet` in facebookresearch/moco-v3 (moco/builder.py): the online encoder is
backbone -> projector (num_features-4096-256, BN + ReLU in the hidden layer, a BN without affine
after the last) -> predictor (256-4096-256, BN + ReLU in the hidden layer, nothing after the
last); the momentum encoder is a copy of backbone -> projector. Every Linear is without bias.
A separate file from `moco.py` (MoCo v2): no queue, no shuffle-BN, a predictor, another loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from sslpipe import distributed
from sslpipe.losses import moco_v3_ctr
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.parts import MomentumEncoder
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import mlp
from sslpipe.optim.schedules import constant, cosine_to_one
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class MoCoV3Config:
    temperature: float = 1.0        # --moco-t: 1.0 for ResNet-50 (0.2 for ViT)
    momentum: float = 0.99          # --moco-m: of the momentum encoder's EMA, at the first step
    momentum_schedule: Literal["cosine", "constant"] = "cosine"  # cosine to 1.0 (--moco-m-cos)
    projector: tuple[int, ...] = (4096, 256)  # after the backbone (--moco-mlp-dim, --moco-dim)
    predictor_hidden: int = 4096    # the predictor is projector[-1]-hidden-projector[-1]

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if not self.projector or min(self.projector) < 1:
            raise ValueError(f"projector must be a non-empty list of widths >= 1, got {list(self.projector)}")
        if self.predictor_hidden < 1:
            raise ValueError(f"predictor_hidden must be >= 1, got {self.predictor_hidden}")


class MoCoV3(Method):
    Config = MoCoV3Config

    def __init__(self, backbone, config: MoCoV3Config, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        dim = config.projector[-1]
        # All Linear layers of the official MLPs are without bias: mlp() gives one exactly where no
        # BN follows, i.e. to the predictor's last layer only, which is replaced.
        self.projector = mlp([backbone.num_features, *config.projector], norm_last=True, last_affine=False)
        self.predictor = mlp([dim, config.predictor_hidden, dim])
        self.predictor[-1] = nn.Linear(config.predictor_hidden, dim, bias=False)
        self.momentum_encoder = MomentumEncoder(backbone=self.backbone, projector=self.projector)

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=2, why="each view's queries are matched with the other view's keys")

    def schedules(self, total_steps: int) -> dict[str, np.ndarray]:
        # Per step, as the official's adjust_moco_momentum(epoch + i / iters_per_epoch).
        if self.config.momentum_schedule == "cosine":
            return {"ema_momentum": cosine_to_one(self.config.momentum, total_steps)}
        return {"ema_momentum": constant(self.config.momentum, total_steps)}

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: two (N, 3, H, W) views; loss = ctr(q1, k2) + ctr(q2, k1)."""
        # One forward per view (BN statistics per view batch), as the official code.
        q1, q2 = (self.predictor(self.projector(self.backbone(v))) for v in batch.views)
        with torch.no_grad():
            # The official moves the momentum encoder inside its forward, before the keys.
            self.momentum_encoder.update(step["ema_momentum"])
            k1, k2 = (self.momentum_encoder(v) for v in batch.views)
        t = self.config.temperature
        loss = moco_v3_ctr(q1, k2, t) + moco_v3_ctr(q2, k1, t)
        return StepOutput(loss, {"candidates": float(k1.shape[0] * distributed.world_size()),
                                 **health_metrics(q1)})
