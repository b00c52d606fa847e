"""SwAV (Caron et al. 2020, https://arxiv.org/abs/2006.09882): codes from the global crops by
Sinkhorn-Knopp over the batch of all processes, each crop predicting the codes of the others."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslpipe import distributed
from sslpipe.losses import sinkhorn, swapped_prediction
from sslpipe.methods.base import Method, Step, StepOutput, encode_groups, health_metrics
from sslpipe.methods.parts import FeatureQueue
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import mlp
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class SwAVConfig:
    prototypes: int = 3000
    projector: tuple[int, ...] = (2048, 128)  # 2048-2048-128, BN in the hidden layer
    temperature: float = 0.1
    epsilon: float = 0.05           # Sinkhorn regularisation; 0.03 if the loss sticks at ln(prototypes)
    sinkhorn_iterations: int = 3
    global_views: str = "global"    # the spec's group of global crops, whose codes are computed
    global_crops: int = 2           # its first views that get codes (the paper's crops_for_assign)
    freeze_prototypes_steps: int = 313  # the prototypes' gradient is dropped for these first steps
    queue_length: int = 0           # 0: no queue; else embeddings kept over all processes (3840 at B=256)
    queue_start_epoch: int = 15

    def __post_init__(self):
        if self.prototypes < 1 or self.temperature <= 0 or self.epsilon <= 0 or self.global_crops < 1:
            raise ValueError("prototypes >= 1, temperature > 0, epsilon > 0, global_crops >= 1 required")
        if self.sinkhorn_iterations < 1:  # no iteration: the codes would be no assignment at all
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {self.sinkhorn_iterations}")
        for name in ("freeze_prototypes_steps", "queue_length", "queue_start_epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class SwAV(Method):
    Config = SwAVConfig

    def __init__(self, backbone, config: SwAVConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        world = distributed.world_size()
        self.projector = mlp([backbone.num_features, *config.projector])
        self.prototypes = nn.Linear(config.projector[-1], config.prototypes, bias=False)
        if config.queue_length % (global_batch) and config.queue_length:
            raise ValueError(f"method.queue_length ({config.queue_length}) must be a multiple of the "
                             f"global batch (data.batch_size={global_batch})")
        # One queue per assigned crop, of this process's own embeddings (the official code's).
        length = config.queue_length // world
        self.queues = nn.ModuleList(FeatureQueue(length, config.projector[-1], per_rank=True)
                                    for _ in range(config.global_crops))

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(at_least=2, groups=((self.config.global_views, self.config.global_crops),),
                           why=f"codes come from the first method.global_crops={self.config.global_crops} "
                               f"views of method.global_views={self.config.global_views!r}, and each crop "
                               f"predicts another's")

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: the global crops (e.g. 2 x (N, 3, 224, 224)) and any local ones."""
        n = batch.size
        with torch.no_grad():  # prototypes on the unit sphere, as the official code, every step
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        assigned = batch.named(self.config.global_views)[:self.config.global_crops]
        order = assigned + [i for i in range(len(batch.views)) if i not in assigned]  # assigned crops first
        features = encode_groups(self.backbone, batch)
        z = F.normalize(self.projector(torch.cat([features[i] for i in order])), dim=1)   # (V*N, D)
        scores = self.prototypes(z)                                                     # (V*N, K)
        codes = [self._codes(scores[i * n:(i + 1) * n], z[i * n:(i + 1) * n], i, step)
                 for i in range(len(assigned))]
        loss = swapped_prediction(scores.split(n), codes, self.config.temperature)
        return StepOutput(loss, health_metrics(z[:n]))

    @torch.no_grad()
    def _codes(self, scores: torch.Tensor, z: torch.Tensor, crop: int, step: Step) -> torch.Tensor:
        """(N, K) codes of one assigned crop; with the queue, Sinkhorn also sees past embeddings."""
        scores = scores.detach()
        queue = self.queues[crop]
        if queue.length and step.epoch >= self.config.queue_start_epoch:
            if queue.full:  # only once it holds real embeddings (the official code's use_the_queue)
                past = queue.rows.to(scores.dtype) @ self.prototypes.weight.T.to(scores.dtype)
                scores = torch.cat([past, scores])
            queue.push(z.detach().float())
        return sinkhorn(scores, self.config.epsilon, self.config.sinkhorn_iterations)[-z.shape[0]:]

    def before_optimizer_step(self, step: Step) -> None:
        if step.index < self.config.freeze_prototypes_steps:
            self.prototypes.weight.grad = None
