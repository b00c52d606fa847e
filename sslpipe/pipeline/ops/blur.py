"""Gaussian blur with a per-sample sigma (SimCLR's, torchvision's GaussianBlur), probability `p`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sslpipe.pipeline import color
from sslpipe.pipeline.ops.base import PhotometricOp, probability


@dataclass(frozen=True)
class Blur:
    """Gaussian blur with probability `p`, sigma drawn per sample from U[sigma].

    `kernel_size` (odd) defaults to about 10% of the view's size, as in SimCLR (23 px at 224).
    """

    p: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    kernel_size: int | None = None

    def __post_init__(self):
        probability("p", self.p)
        low, high = self.sigma
        if not (0 < low <= high < math.inf):
            raise ValueError(f"sigma must be [low, high] with 0 < low <= high, got {list(self.sigma)}")
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")

    def kernel_for(self, size: int) -> int:
        """The kernel size: as set, or the odd number nearest to 10% of `size` (at least 3)."""
        if self.kernel_size is not None:
            return self.kernel_size
        return max(3, 2 * round((size * 0.1 - 1) / 2) + 1)  # the odd number nearest to size / 10


class BlurOp(PhotometricOp):
    key, Settings = "blur", Blur

    def __init__(self, settings, batch_size, size, device):
        super().__init__(settings, batch_size, size, device)
        kernels = {s.kernel_for(size) for s in self.settings if s is not None}
        if len(kernels) > 1:
            raise ValueError(f"the views of a stage that blur must share one kernel size, "
                             f"got {sorted(kernels)}")
        self.kernel_size = kernels.pop()
        if self.kernel_size // 2 >= size:  # reflect padding needs a margin smaller than the view
            raise ValueError(f"a blur kernel of {self.kernel_size} taps does not fit a {size}-px view: "
                             f"set the view's blur.kernel_size below {2 * size}")
        self.low = self.per_view([s.sigma[0] if s else 1.0 for s in self.settings])
        self.high = self.per_view([s.sigma[1] if s else 1.0 for s in self.settings])

    @staticmethod
    def stage_key(settings, size):
        return settings.kernel_for(size)

    def sample(self, generator):
        u = self.uniform(generator, 2)
        return {"on": u[:, 0] < self.p, "sigma": self.low + (self.high - self.low) * u[:, 1]}

    def apply(self, x, params, key=None):
        return color.gaussian_blur(x, params["sigma"], self.kernel_size)

    def select(self, x, params):  # the identity kernel where not drawn
        return color.gaussian_blur(x, params["sigma"], self.kernel_size, where=params["on"])
