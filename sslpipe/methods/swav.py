"""SwAV (Caron et al. 2020, https://arxiv.org/abs/2006.09882): codes from the global crops by
Sinkhorn-Knopp over the batch of all processes, each crop predicting the codes of the others."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslpipe import distributed
from sslpipe.losses import sinkhorn, swapped_prediction
from sslpipe.methods.base import Method, Step, StepOutput, encode_by_size, health_metrics
from sslpipe.models import mlp


@dataclass(frozen=True)
class SwAVConfig:
    prototypes: int = 3000
    projector: tuple[int, ...] = (2048, 128)  # 2048-2048-128, BN in the hidden layer
    temperature: float = 0.1
    epsilon: float = 0.05           # Sinkhorn regularisation; 0.03 if the loss sticks at ln(prototypes)
    sinkhorn_iterations: int = 3
    global_crops: int = 2           # the first views of the spec; codes come from these only
    freeze_prototypes_steps: int = 313  # the prototypes' gradient is dropped for these first steps
    queue_length: int = 0           # 0: no queue; else embeddings kept over all processes (3840 at B=256)
    queue_start_epoch: int = 15

    def __post_init__(self):
        if self.prototypes < 1 or self.temperature <= 0 or self.epsilon <= 0 or self.global_crops < 1:
            raise ValueError("prototypes >= 1, temperature > 0, epsilon > 0, global_crops >= 1 required")


class SwAV(Method):
    Config = SwAVConfig

    def __init__(self, backbone, config: SwAVConfig, *, global_batch: int):
        super().__init__(backbone)
        self.config = config
        world = distributed.world_size()
        self.projector = mlp([backbone.num_features, *config.projector])
        self.prototypes = nn.Linear(config.projector[-1], config.prototypes, bias=False)
        if config.queue_length % (global_batch) and config.queue_length:
            raise ValueError(f"method.queue_length ({config.queue_length}) must be a multiple of the "
                             f"global batch (data.batch_size={global_batch})")
        # Each process keeps its own queue (not a buffer: DDP would overwrite it with rank 0's).
        self.queue = torch.zeros(config.global_crops, config.queue_length // world, config.projector[-1])
        self.queue_used = False

    def forward(self, views: list[torch.Tensor], step: Step) -> StepOutput:
        """views: the global crops first (e.g. 2 x (N, 3, 224, 224)), then any local ones."""
        crops, n = len(views), views[0].shape[0]
        if crops < max(2, self.config.global_crops):
            raise ValueError(f"SwAV needs at least 2 views and method.global_crops "
                             f"({self.config.global_crops}), got {crops}: each crop predicts another's codes")
        with torch.no_grad():  # prototypes on the unit sphere, as the official code, every step
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = F.normalize(self.projector(encode_by_size(self.backbone, views)), dim=1)   # (V*N, D)
        scores = self.prototypes(z)                                                    # (V*N, K)
        codes = [self._codes(scores[i * n:(i + 1) * n], z[i * n:(i + 1) * n], i, step)
                 for i in range(self.config.global_crops)]
        loss = swapped_prediction(scores.split(n), codes, self.config.temperature)
        return StepOutput(loss, health_metrics(z[:n]))

    @torch.no_grad()
    def _codes(self, scores: torch.Tensor, z: torch.Tensor, crop: int, step: Step) -> torch.Tensor:
        """(N, K) codes of one global crop; with the queue, Sinkhorn also sees past embeddings."""
        scores = scores.detach()
        if self.queue.shape[1] and step.epoch >= self.config.queue_start_epoch:
            self.queue = self.queue.to(z.device)
            # Only once the queue holds real embeddings (its last row is filled).
            self.queue_used = self.queue_used or bool(self.queue[crop, -1].any())
            if self.queue_used:
                past = self.queue[crop].to(scores.dtype) @ self.prototypes.weight.T.to(scores.dtype)
                scores = torch.cat([past, scores])
            self.queue[crop] = torch.cat([z.detach().float(), self.queue[crop, :-z.shape[0]]])
        return sinkhorn(scores, self.config.epsilon, self.config.sinkhorn_iterations)[-z.shape[0]:]

    def before_optimizer_step(self, step: Step) -> None:
        if step.index < self.config.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    def rank_state_dict(self) -> dict:
        return {"queue": self.queue.detach().cpu().clone(), "queue_used": self.queue_used}

    def load_rank_state_dict(self, state: dict) -> None:
        if state["queue"].shape != self.queue.shape:
            raise ValueError(f"the saved SwAV queue has shape {tuple(state['queue'].shape)}, this run's "
                             f"{tuple(self.queue.shape)} (another number of processes or queue_length?)")
        self.queue, self.queue_used = state["queue"].clone(), state["queue_used"]
