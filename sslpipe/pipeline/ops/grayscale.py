"""Grayscale: luma in all three channels, with probability `p` (torchvision's RandomGrayscale)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslpipe.pipeline import color
from sslpipe.pipeline.ops.base import PhotometricOp, probability


@dataclass(frozen=True)
class Grayscale:
    p: float = 0.2

    def __post_init__(self):
        probability("p", self.p)


class GrayscaleOp(PhotometricOp):
    key, Settings = "grayscale", Grayscale

    def apply(self, x, params, key=None):
        return color.to_grayscale(x)

    def select(self, x, params):  # the (n, 1, H, W) luma broadcast: no 3-channel copy of it
        return torch.where(params["on"].view(-1, 1, 1, 1), color.grayscale(x), x)
