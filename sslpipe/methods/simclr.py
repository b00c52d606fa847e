"""SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709): two views, NT-Xent over the
2N views of the global batch, the negatives gathered from every process with their gradient."""

from __future__ import annotations

from dataclasses import dataclass

from sslpipe.losses import nt_xent
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import mlp
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class SimCLRConfig:
    temperature: float = 0.1        # 0.1 on ImageNet, 0.5 on CIFAR-scale data
    # After the backbone: 2048-2048-128 with BN after each layer, the output's too, as the official
    # TF code (whose output BN has no shift; here it has one).
    projector: tuple[int, ...] = (2048, 128)

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class SimCLR(Method):
    Config = SimCLRConfig

    def __init__(self, backbone, config: SimCLRConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        self.projector = mlp([backbone.num_features, *config.projector], norm_last=True)

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=2, same_size=True, why="the two views of an image are its positive pair, "
                                                        "encoded as one batch")

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: two (N, 3, H, W) views of the same images."""
        z = self.projector(self.backbone(batch.concat((0, 1))))   # (2N, D): one BN batch, as the paper
        z1, z2 = z.chunk(2)
        loss, candidates = nt_xent(z1, z2, self.config.temperature)
        return StepOutput(loss, {"candidates": float(candidates), **health_metrics(z1)})
