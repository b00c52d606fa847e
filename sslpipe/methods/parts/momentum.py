"""A momentum (EMA) encoder: MoCo's key encoder, BYOL's target network.

    self.key_encoder = MomentumEncoder(backbone=self.backbone, head=self.head)
    self.key_encoder.update(step["ema_momentum"])     # theta' <- m theta' + (1 - m) theta
    k = self.key_encoder(x)                            # head(backbone(x)), no gradient
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    """Frozen copies of online modules, applied in the given order, moved towards them by EMA.

    Only parameters are averaged: the copies' BatchNorm buffers are their own running statistics
    (as in MoCo's and BYOL's code). The copies are ordinary submodules, saved with the model; the
    online modules are referenced, not owned.
    """

    def __init__(self, **online: nn.Module):
        super().__init__()
        self.copies = nn.ModuleDict({name: copy.deepcopy(module).requires_grad_(False)
                                     for name, module in online.items()})
        object.__setattr__(self, "_online", dict(online))  # not registered: the method owns them

    def __getitem__(self, name: str) -> nn.Module:
        """The copy of the online module given as `name`."""
        return self.copies[name]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """theta' <- m theta' + (1 - m) theta for every parameter, with two fused (foreach) kernels."""
        online = [p for module in self._online.values() for p in module.parameters()]
        target = [p for module in self.copies.values() for p in module.parameters()]
        torch._foreach_mul_(target, momentum)
        torch._foreach_add_(target, online, alpha=1 - momentum)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.copies.values():
            x = module(x)
        return x
