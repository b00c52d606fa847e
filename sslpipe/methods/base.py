"""The one contract every method keeps, and what the training loop passes to it.

A method is an `nn.Module` holding its backbone and heads: `forward(views, step) -> StepOutput`.
Schedule values (EMA momentum, epoch) come in with `step`; no counters hide inside a module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Step:
    """Where training is: the global step and epoch, and this step's scheduled values."""

    index: int = 0
    epoch: int = 0
    ema_momentum: float = 0.0     # for methods with a momentum encoder
    seed: int = 0                 # a method's own draws (MoCo's batch shuffle) derive from (seed, index)


@dataclass
class StepOutput:
    """The loss to minimize (a scalar, float32) and metrics to log (0-dim tensors, not synced)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Base of the methods: a backbone, heads, and the loss of one batch of views.

    Subclasses set `Config` (a frozen dataclass of the method's hyperparameters, the recipe's
    `method` section) and implement `forward`. Optional hooks the loop calls:
    `ema_momentum_schedule(total_steps)`, `before_optimizer_step(step)` (after backward, e.g. SwAV
    freezes its prototypes) and
    `rank_state_dict()` / `load_rank_state_dict()` for state that differs between processes.
    """

    Config: type
    # Parameters (by name prefix) whose learning rate stays at its initial value (SimSiam's predictor).
    fixed_lr_prefixes: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, views: list[torch.Tensor], step: Step) -> StepOutput:
        raise NotImplementedError

    def ema_momentum_schedule(self, total_steps: int) -> np.ndarray | None:
        """(total_steps,) EMA momentum per step, for methods with a momentum encoder."""
        return None

    def before_optimizer_step(self, step: Step) -> None:
        pass

    def rank_state_dict(self) -> dict:
        return {}

    def load_rank_state_dict(self, state: dict) -> None:
        pass


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor (SimSiam, Sec. 4.1): std over the batch of l2-normalized (N, D) embeddings,
    averaged over dimensions. About 1/sqrt(D) when healthy, 0 when collapsed to a point."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def health_metrics(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """`embedding_std` of (N, D) embeddings and its healthy reference 1/sqrt(D)."""
    return {"embedding_std": embedding_std(z),
            "embedding_std_ref": torch.tensor(z.shape[1] ** -0.5)}


def encode_by_size(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Backbone features of all views, (V*N, F) in view order: consecutive views of the same size
    go through as one batch (SwAV's multi-crop: one call for the 224s, one for the 96s)."""
    features, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        features.append(backbone(torch.cat(views[start:end])))
        start = end
    return torch.cat(features)
