"""Color jitter: torchvision's ColorJitter, applied with probability `p`, in a random order per sample.

Brightness, contrast and saturation factors are drawn from U[max(0, 1 - s), 1 + s], the hue shift
from U[-h, h] of a full turn (torchvision's semantics; Kornia's ColorJitter draws one order per
batch, torchvision and the papers one per image).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from sslpipe.pipeline import color
from sslpipe.pipeline.ops.base import PhotometricOp, probability

STRENGTHS = ("brightness", "contrast", "saturation", "hue")  # the values in `params["order"]`: 0..3
KERNELS = (color.brightness, color.contrast, color.saturation, color.shift_hue)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
# The device's slots (see `ColorJitterOp.select`): the hue, long arithmetic, once at one aligned
# slot; the three affine sub-ops in three slots before it and three after.
SLOTS = ("affine", "affine", "affine", "hue", "affine", "affine", "affine")


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

    def __init__(self, settings, batch_size, size, device):
        super().__init__(settings, batch_size, size, device)
        strength = {name: [getattr(s, name) if s else 0.0 for s in self.settings] for name in STRENGTHS}
        self.low = [self.per_view([max(0.0, 1 - x) for x in strength[name]]) for name in STRENGTHS[:3]]
        self.high = [self.per_view([1 + x for x in strength[name]]) for name in STRENGTHS[:3]]
        self.hue = self.per_view(strength["hue"])
        # Static switches: a sub-op no view uses is never computed (a zero hue shift would not
        # leave the values bit-exact).
        self.active = [any(x > 0 for x in strength[name]) for name in STRENGTHS]
        self.slot_table = _slot_table().to(self.device)
        self._digits = torch.tensor([64, 16, 4, 1], device=self.device)  # an order as a base-4 number

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
        code = (params["order"] * self._digits).sum(dim=1)
        return torch.where(params["on"], code, -1)

    @staticmethod
    def order_of(key: int) -> tuple[int, ...]:
        """The order a block key stands for (() for -1: not jittered)."""
        return () if key < 0 else tuple(key >> shift & 3 for shift in (6, 4, 2, 0))

    def apply(self, x, params, key=None):
        if key is None:
            return self.select(x, params)
        factors = [params[name] for name in STRENGTHS]
        for i in self.order_of(key):  # every sample here runs this order: each sub-op once
            if self.active[i]:
                x = KERNELS[i](x, factors[i])
        return x

    def select(self, x, params):
        """The random order per sample, vectorized over the batch in the slots of `SLOTS`.

        Brightness, contrast and saturation are each a per-sample affine map of the RGB values
        (`color.jitter_affine`), and every jittered sample shifts its hue exactly once. So each
        sample's order is laid onto the slots (`_slot_table`): the sub-ops it runs before its
        hue at slots 0..2 (ending at 2), the hue at slot 3, those after at 4..6. At an affine slot
        every sample runs the one map it put there (the identity where none: exactly x); at the
        hue slot the samples that drew the jitter shift their hue. One hue pass and six affine
        passes instead of each sub-op at each of the four order positions (16 passes).
        """
        code = self.block_key(params)
        plan = torch.where((code >= 0)[:, None], self.slot_table[code.clamp_min(0)], -1)  # (N, 7)
        for slot, kind in enumerate(SLOTS):
            sub_op = plan[:, slot]
            if kind == "hue":
                if self.active[HUE]:
                    x = color.shift_hue(x, params["hue"], where=sub_op == HUE)
            elif self.active[BRIGHTNESS] or self.active[CONTRAST] or self.active[SATURATION]:
                x = self._affine(x, sub_op, params)
        return x

    def _affine(self, x, sub_op, params):
        """Per sample, brightness, contrast or saturation as `sub_op` (N,) says, else nothing."""
        def factor(i):  # the drawn factor where this slot runs sub-op i, 1.0 elsewhere
            return torch.where((sub_op == i) & self.active[i], params[STRENGTHS[i]], 1.0)

        contrast = factor(CONTRAST)  # around the mean luma of this slot's input, one reduction
        mean = color.mean_luma(x) if self.active[CONTRAST] else None
        matrix, offset = color.jitter_affine(factor(BRIGHTNESS), contrast, factor(SATURATION), mean)
        return color.affine(x, matrix, offset)


def _slot_table() -> torch.Tensor:
    """(256, 7) int64: for each order (as its base-4 code, `block_key`), the sub-op of each slot
    of `SLOTS` (-1: none). Built once on the host; the 24 orders fill 24 of its rows."""
    table = torch.full((256, len(SLOTS)), -1, dtype=torch.int64)
    hue_slot = SLOTS.index("hue")
    for order in itertools.permutations(range(4)):
        at = order.index(HUE)
        slots = [-1] * len(SLOTS)
        slots[hue_slot - at:hue_slot] = order[:at]  # the sub-ops before the hue end just before it
        slots[hue_slot] = HUE
        slots[hue_slot + 1:hue_slot + 4 - at] = order[at + 1:]
        table[sum(i << shift for i, shift in zip(order, (6, 4, 2, 0)))] = torch.tensor(slots)
    return table
