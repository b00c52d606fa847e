"""SimSiam (Chen & He 2021, https://arxiv.org/abs/2011.10566): a predictor on one branch and a
stop-gradient on the other, symmetric negative cosine, no negatives and no momentum encoder."""

from __future__ import annotations

from dataclasses import dataclass

from sslpipe.losses import negative_cosine
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import mlp
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class SimSiamConfig:
    projector: tuple[int, ...] = (2048, 2048, 2048)  # 3 layers, BN on each, the last without affine
    predictor_hidden: int = 512     # the 2048-512-2048 bottleneck
    fixed_predictor_lr: bool = True  # the paper's finding: the predictor's rate is not decayed


class SimSiam(Method):
    Config = SimSiamConfig

    def __init__(self, backbone, config: SimSiamConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        dim = config.projector[-1]
        self.projector = mlp([backbone.num_features, *config.projector], norm_last=True, last_affine=False)
        self.predictor = mlp([dim, config.predictor_hidden, dim])
        self.fixed_lr_prefixes = ("predictor.",) if config.fixed_predictor_lr else ()

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=2, why="each view predicts the other")

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: two (N, 3, H, W) views; loss = -1/2 [cos(p1, sg z2) + cos(p2, sg z1)]."""
        # One forward per view, as the official code: BN statistics are per view batch.
        z1, z2 = (self.projector(self.backbone(v)) for v in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
        return StepOutput(loss, health_metrics(z1))
