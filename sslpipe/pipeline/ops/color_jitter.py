"""Color jitter: torchvision's ColorJitter, applied with probability `p`, in a random order per sample.

Brightness, contrast and saturation factors are drawn from U[max(0, 1 - s), 1 + s], the hue shift
from U[-h, h] of a full turn (torchvision's semantics; Kornia's ColorJitter draws one order per
batch, torchvision and the papers one per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sslpipe.pipeline import color
from sslpipe.pipeline.ops.base import PhotometricOp, probability

STRENGTHS = ("brightness", "contrast", "saturation", "hue")  # the values in `params["order"]`: 0..3
KERNELS = (color.brightness, color.contrast, color.saturation, color.shift_hue)


@dataclass(frozen=True)
class ColorJitter:
    p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1

    def __post_init__(self):
        probability("p", self.p)
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a fraction of a full turn), got {self.hue}")


class ColorJitterOp(PhotometricOp):
    """Params: "on", the factors "brightness", "contrast", "saturation" (1.0 where off), "hue" (turns,
    0.0 where off) and "order" (N, 4) int64, a permutation of 0..3 (`STRENGTHS`) per sample."""

    key, Settings = "color_jitter", ColorJitter
    masks_itself = True

    def __init__(self, settings, batch_size, size, device):
        super().__init__(settings, batch_size, size, device)
        strength = {name: [getattr(s, name) if s else 0.0 for s in self.settings] for name in STRENGTHS}
        self.low = [self.per_view([max(0.0, 1 - x) for x in strength[name]]) for name in STRENGTHS[:3]]
        self.high = [self.per_view([1 + x for x in strength[name]]) for name in STRENGTHS[:3]]
        self.hue = self.per_view(strength["hue"])
        # Static switches: a sub-op no view uses is never computed (a zero hue shift would not
        # leave the values bit-exact).
        self.active = [any(x > 0 for x in strength[name]) for name in STRENGTHS]

    def sample(self, generator):
        u = self.uniform(generator, 5)
        order = self.uniform(generator, 4).argsort(dim=1)
        on = u[:, 0] < self.p
        factors = {name: torch.where(on, lo + (hi - lo) * u[:, 1 + i], 1.0)
                   for i, (name, lo, hi) in enumerate(zip(STRENGTHS, self.low, self.high))}
        hue = torch.where(on, self.hue * (2 * u[:, 4] - 1), 0.0)
        return {"on": on, **factors, "hue": hue, "order": order}

    def block_key(self, params):
        """(N,) int64: the order as a base-4 number, -1 where the sample is not jittered."""
        code = (params["order"] * torch.tensor([64, 16, 4, 1], device=params["order"].device)).sum(dim=1)
        return torch.where(params["on"], code, -1)

    @staticmethod
    def order_of(key: int) -> tuple[int, ...]:
        """The order a block key stands for (() for -1: not jittered)."""
        return () if key < 0 else tuple(key >> shift & 3 for shift in (6, 4, 2, 0))

    def apply(self, x, params, key=None):
        factors = [params[name] for name in STRENGTHS]
        if key is not None:  # every sample here runs the same order: each sub-op once, in that order
            for i in self.order_of(key):
                if self.active[i]:
                    x = KERNELS[i](x, factors[i])
            return x
        # The random order, vectorized: at position k, each sub-op changes the samples whose
        # order[:, k] it is (and that drew the jitter at all).
        for k in range(4):
            step = params["order"][:, k]
            for i, (kernel, factor) in enumerate(zip(KERNELS, factors)):
                if self.active[i]:
                    selected = ((step == i) & params["on"]).view(-1, 1, 1, 1)
                    x = torch.where(selected, kernel(x, factor), x)
        return x
