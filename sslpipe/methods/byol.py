"""BYOL (Grill et al. 2020, https://arxiv.org/abs/2006.07733): an online network (backbone,
projector, predictor) regresses the projection of the other view by a target network (backbone,
projector) that follows it by EMA; no negatives.

As google-deepmind/deepmind-research byol/ (byol_experiment.py, utils/networks.py,
utils/schedules.py): one forward per view and network, each view a batch of its own for BN (the
official BN is cross-replica: set `model.sync_bn`); loss = mean_i [l(q1_i, z'2_i) + l(q2_i, z'1_i)]
with l = 2 - 2 cos; the target moved after the optimizer step with the momentum of that step,
tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2 (`cosine_to_one`: K = total steps - 1 here, so the
last step is exactly 1; the official K is the total, a difference of O(1/K)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from sslpipe.losses import regression_loss
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.parts import MomentumEncoder
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import mlp
from sslpipe.optim.schedules import constant, cosine_to_one
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class BYOLConfig:
    projector: tuple[int, ...] = (4096, 256)  # after the backbone: 4096 (BN, ReLU) -> 256
    predictor_hidden: int = 4096              # 256 -> 4096 (BN, ReLU) -> 256
    momentum: float = 0.996                   # tau_base (1000 epochs; 0.99 for 100-300)
    momentum_schedule: Literal["cosine", "constant"] = "cosine"  # cosine: to 1.0 at the last step
    # The official MLP's output Linear has no bias (utils/networks.py); the truncated triplet's neck has one.
    last_bias: bool = False

    def __post_init__(self):
        if not self.projector or min(self.projector) < 1:
            raise ValueError(f"projector must be one or more widths >= 1, got {list(self.projector)}")
        if self.predictor_hidden < 1:
            raise ValueError(f"predictor_hidden must be >= 1, got {self.predictor_hidden}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")


def head(dims: list[int], last_bias: bool) -> nn.Sequential:
    """BYOL's MLP: Linear -> BN -> ReLU per hidden layer, then a Linear (with a bias or not)."""
    layers = mlp(dims)
    if not last_bias:
        layers[-1] = nn.Linear(dims[-2], dims[-1], bias=False)
    return layers


class BYOL(Method):
    Config = BYOLConfig

    def __init__(self, backbone, config: BYOLConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        dim = config.projector[-1]
        self.projector = head([backbone.num_features, *config.projector], config.last_bias)
        self.predictor = head([dim, config.predictor_hidden, dim], config.last_bias)  # online only
        # The official code initialises the target with its own random draw; here it starts as a
        # copy (as MoCo's key encoder and the truncated triplet's target).
        self.target = MomentumEncoder(backbone=self.backbone, projector=self.projector)

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=2, why="each view's prediction regresses the other's target projection")

    def schedules(self, total_steps: int) -> dict[str, np.ndarray]:
        if self.config.momentum_schedule == "cosine":
            return {"ema_momentum": cosine_to_one(self.config.momentum, total_steps)}
        return {"ema_momentum": constant(self.config.momentum, total_steps)}

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: two (N, 3, H, W) views of the same images."""
        online_inputs, target_inputs = self.branch_inputs(batch, step)
        # One forward per view (the official apply_once_fn): BN statistics per view.
        z = [self.projector(self.backbone(x)) for x in online_inputs]
        p = [self.predictor(zi) for zi in z]
        with torch.no_grad():
            targets = [self.target(x) for x in target_inputs]
        loss, metrics = self.objective(p, targets)
        return StepOutput(loss, {**metrics, **health_metrics(z[0])})

    def branch_inputs(self, batch: Batch, step: Step) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The two views as the online and as the target network see them (BYOL: as they come)."""
        return list(batch.views), list(batch.views)

    def objective(self, p: list[torch.Tensor], targets: list[torch.Tensor]):
        """Each view's prediction against the other view's target projection, the two added."""
        return regression_loss(p[0], targets[1]) + regression_loss(p[1], targets[0]), {}

    def after_optimizer_step(self, step: Step) -> None:
        # theta' <- tau theta' + (1 - tau) theta with the tau of the step just taken (official order).
        self.target.update(step["ema_momentum"])
