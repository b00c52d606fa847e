"""MoCo v2 (Chen et al. 2020, https://arxiv.org/abs/2003.04297; He et al. 2019,
https://arxiv.org/abs/1911.05722): queries against their keys from a momentum encoder and a
queue of the keys of past batches (InfoNCE, temperature 0.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sslpipe import distributed
from sslpipe.losses import info_nce
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.parts import FeatureQueue, MomentumEncoder
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import convert_global_batchnorm, mlp
from sslpipe.models.split_batchnorm import split_batchnorm
from sslpipe.optim.schedules import constant, cosine_to_one
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class MoCoConfig:
    temperature: float = 0.2
    queue_size: int = 65536         # K: a multiple of the global batch
    momentum: float = 0.999         # of the key encoder's EMA
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # cosine: to 1.0 (MoCo v3, BYOL)
    head: tuple[int, ...] = (2048, 128)  # MLP head 2048-2048-128 without BN (v2)
    # How the key encoder avoids sharing BN statistics with the queries: "shuffle" shuffles the
    # batch across processes; "split" computes BN over `bn_splits` sub-batches (one process);
    # "sync" uses the global batch's statistics in both encoders (GlobalBatchNorm2d). "auto": shuffle
    # with several processes, else split.
    key_bn: Literal["auto", "shuffle", "split", "sync"] = "auto"
    bn_splits: int = 8

    def __post_init__(self):
        if self.temperature <= 0 or self.queue_size < 1 or not 0 <= self.momentum <= 1:
            raise ValueError("temperature > 0, queue_size >= 1 and momentum in [0, 1] are required")
        if self.bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {self.bn_splits}")


class MoCo(Method):
    Config = MoCoConfig

    def __init__(self, backbone, config: MoCoConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        world = distributed.world_size()
        if config.queue_size % global_batch:
            raise ValueError(f"method.queue_size ({config.queue_size}) must be a multiple of the global "
                             f"batch (data.batch_size={global_batch}): each step enqueues the whole batch")
        self.key_bn = {"auto": "shuffle" if world > 1 else "split"}.get(config.key_bn, config.key_bn)
        if self.key_bn == "shuffle" and world == 1:
            raise ValueError("method.key_bn=shuffle needs several processes; with one use split")
        if self.key_bn == "sync":  # both encoders; the loop's model.sync_bn need not be set
            self.backbone = convert_global_batchnorm(self.backbone)
        if self.key_bn == "split":
            if (global_batch // world) % config.bn_splits:
                raise ValueError(f"method.bn_splits ({config.bn_splits}) must divide the batch per "
                                 f"process ({global_batch // world})")
            split_batchnorm(self.backbone, config.bn_splits)
        self.head = mlp([backbone.num_features, *config.head], norm=False)
        self.key_encoder = MomentumEncoder(backbone=self.backbone, head=self.head)
        # Every process enqueues every process's keys: one replicated queue, saved with the model.
        self.queue = FeatureQueue(config.queue_size, config.head[-1],
                                  initial=F.normalize(torch.randn(config.queue_size, config.head[-1]), dim=1))

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=2, why="queries from the first view, their keys from the second")

    def schedules(self, total_steps: int) -> dict[str, np.ndarray]:
        if self.config.momentum_schedule == "cosine":
            return {"ema_momentum": cosine_to_one(self.config.momentum, total_steps)}
        return {"ema_momentum": constant(self.config.momentum, total_steps)}

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: two (N, 3, H, W) views; queries from the first, keys from the second."""
        q = F.normalize(self.head(self.backbone(batch.views[0])), dim=1)
        with torch.no_grad():
            # Before the keys, as the official code (BYOL-style methods move theirs after the step).
            self.key_encoder.update(step["ema_momentum"])
            keys_in, restore = self._shuffle(batch.views[1], step)
            k = restore(F.normalize(self.key_encoder(keys_in), dim=1))
        # The queue is changed in place below: the loss keeps a copy for its backward.
        loss = info_nce(q, k, self.queue.rows.clone().detach(), self.config.temperature)
        keys = distributed.gather(k)  # every process's keys, so the queues stay identical
        self.queue.push(keys)
        return StepOutput(loss, {"enqueued": float(keys.shape[0]), **health_metrics(q)})

    def _shuffle(self, x: torch.Tensor, step: Step):
        """Shuffle-BN: the key encoder sees another process's samples, so BN cannot leak the
        match between queries and keys. Returns this process's shuffled slice, and the function
        that puts its (N, D) outputs back in the original order."""
        if self.key_bn not in ("shuffle", "split"):  # split: shuffled within the batch, as the official demo
            return x, lambda k: k
        world, rank, n = distributed.world_size(), distributed.rank(), x.shape[0]
        # The same permutation on every process, drawn from (seed, step): no broadcast needed.
        generator = torch.Generator().manual_seed(step.seed * 1_000_003 + step.index)
        order = torch.randperm(n * world, generator=generator)
        # Drawn on the host (CPU randperm: the same numbers on any device), sent without blocking:
        # from pageable memory a copy to a GPU waits for the queue; the pinned block is not reused
        # before the copy is done (the caching host allocator records its stream).
        if x.device.type == "cuda":
            order = order.pin_memory()
        order = order.to(x.device, non_blocking=True)
        mine = order.view(world, n)[rank]
        back = torch.argsort(order).view(world, n)[rank]
        return distributed.gather(x)[mine], lambda k: distributed.gather(k)[back]
