"""Solarize: invert the values at or above a threshold, with probability `p` (BYOL's second view)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sslpipe.pipeline import color
from sslpipe.pipeline.ops.base import PhotometricOp, probability


@dataclass(frozen=True)
class Solarize:
    """Invert the values at or above `threshold` (a fraction of the range) with probability `p`."""

    p: float = 0.2
    threshold: float = 0.5

    def __post_init__(self):
        probability("p", self.p)
        probability("threshold", self.threshold)


class SolarizeOp(PhotometricOp):
    key, Settings = "solarize", Solarize

    def __init__(self, settings, batch_size, size, device):
        super().__init__(settings, batch_size, size, device)
        self.threshold = self.per_view([s.threshold if s else 1.0 for s in self.settings])

    def sample(self, generator):
        return {"on": self.uniform(generator) < self.p, "threshold": self.threshold.clone()}

    def apply(self, x, params, key=None):
        return color.solarize(x, params["threshold"])

    def select(self, x, params):  # a threshold above every value where not drawn
        return color.solarize(x, torch.where(params["on"], params["threshold"], math.inf))
