"""Color jitter: brightness, contrast, saturation and hue, applied with probability `p`, in a random
order per sample, each followed by a clip to [0, 1]; with one of two semantics (`semantics`).

- "torchvision" (the default; torchvision's ColorJitter, SimCLR, MoCo, SwAV, ...): brightness,
  contrast and saturation factors from U[max(0, 1 - s), 1 + s], the hue shift from U[-h, h] of a
  full turn. Brightness multiplies, contrast blends with the image's mean luma, saturation with
  each pixel's luma.
- "tf" (TensorFlow's `tf.image.adjust_*`, as BYOL's official JAX code, deepmind-research
  `byol/utils/augmentations.py`, writes them): brightness adds a delta from U[-b, b]; contrast
  scales each channel around its own mean over the image by a factor from U[1 - c, 1 + c];
  saturation scales the HSV saturation by a factor from U[1 - s, 1 + s], clipped to [0, 1]; hue
  adds U[-h, h] to the HSV hue, modulo 1 (the same as torchvision's, so the same kernel). The
  factors are not clamped at 0, as in the reference (a contrast below 0 inverts around the mean,
  a saturation factor below 0 gives S = 0). As the reference (`_color_transform_single_image`
  under `jax.vmap`: one `jax.random.permutation` of the four per image, `jnp.clip(.., 0, 1)`
  after each sub-op, the sub-ops on with probability 0.8 together, then grayscale, a separate op
  here), the order is drawn per image and every sub-op clips.

Both semantics draw the same random numbers from the op's stream (the switch maps them to other
parameters). Kornia's ColorJitter draws one order per batch, torchvision and the papers one per
image.
"""

from __future__ import annotations

import itertools
import math
import typing
from dataclasses import dataclass, field

import torch

from sslpipe.pipeline import color
from sslpipe.pipeline.ops.base import PhotometricOp, probability

STRENGTHS = ("brightness", "contrast", "saturation", "hue")  # the values in `params["order"]`: 0..3
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
SEMANTICS = ("torchvision", "tf")
KERNELS = {"torchvision": (color.brightness, color.contrast, color.saturation, color.shift_hue),
           "tf": (color.tf_brightness, color.tf_contrast, color.tf_saturation, color.shift_hue)}
SATURATION_AND_HUE = 4  # a slot of the slot table that runs both (tf: they commute, see `select`)
# The device's slots (see `ColorJitterOp.select`), and the kind of slot each sub-op runs in.
# torchvision: the hue, long arithmetic, once at one aligned slot; the three affine sub-ops in
# three slots before it and three after. tf: brightness and contrast are affine, saturation and
# hue are not (they take each pixel's max and min) but share one kernel ("hsv", `color.shift_hue`),
# in one pass where they are next to each other in the order: every order then fits AQAAQA.
SLOTS = {"torchvision": ("affine", "affine", "affine", "hue", "affine", "affine", "affine"),
         "tf": ("affine", "hsv", "affine", "affine", "hsv", "affine")}
KINDS = {"torchvision": ("affine", "affine", "affine", "hue"), "tf": ("affine", "affine", "hsv", "hsv")}


@dataclass(frozen=True)
class ColorJitter:
    p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    # Omitted from the spec's `to_dict` when "torchvision": specs written before the switch keep
    # their fingerprint (a resumed run compares it).
    semantics: typing.Literal["torchvision", "tf"] = field(default="torchvision",
                                                           metadata={"omit_if_default": True})

    def __post_init__(self):
        probability("p", self.p)
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {', '.join(SEMANTICS)}, got {self.semantics!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a fraction of a full turn), got {self.hue}")


class ColorJitterOp(PhotometricOp):
    """Params: "on", "brightness", "contrast", "saturation" (factors, 1.0 where off; with "tf"
    semantics "brightness" is the additive delta, 0.0 where off), "hue" (turns, 0.0 where off) and
    "order" (N, 4) int64, a permutation of 0..3 (`STRENGTHS`) per sample. The views of one stage
    share one semantics (`stage_key`)."""

    key, Settings = "color_jitter", ColorJitter

    def __init__(self, settings, batch_size, size, device):
        super().__init__(settings, batch_size, size, device)
        semantics = {s.semantics for s in self.settings if s is not None}
        if len(semantics) > 1:
            raise ValueError(f"the views of a stage that jitter colors must share one semantics, "
                             f"got {sorted(semantics)}")
        self.semantics = semantics.pop() if semantics else "torchvision"
        self.tf = self.semantics == "tf"
        self.kernels, self.slots = KERNELS[self.semantics], SLOTS[self.semantics]
        strength = {name: [getattr(s, name) if s else 0.0 for s in self.settings] for name in STRENGTHS}
        if self.tf:  # a delta in [-b, b] for brightness, factors in [1 - s, 1 + s] for the others
            ranges = [[(-x, x) for x in strength["brightness"]]] + \
                [[(1 - x, 1 + x) for x in strength[name]] for name in STRENGTHS[1:3]]
        else:
            ranges = [[(max(0.0, 1 - x), 1 + x) for x in strength[name]] for name in STRENGTHS[:3]]
        self.low = [self.per_view([lo for lo, _ in r]) for r in ranges]
        self.high = [self.per_view([hi for _, hi in r]) for r in ranges]
        self.rest = [0.0 if self.tf else 1.0, 1.0, 1.0]  # the identity value of each where off
        self.hue = self.per_view(strength["hue"])
        # Static switches: a sub-op no view uses is never computed (a zero hue shift would not
        # leave the values bit-exact).
        self.active = [any(x > 0 for x in strength[name]) for name in STRENGTHS]
        self.slot_table = _slot_table(self.slots, KINDS[self.semantics]).to(self.device)
        self._digits = torch.tensor([64, 16, 4, 1], device=self.device)  # an order as a base-4 number

    @staticmethod
    def stage_key(settings, size):
        return settings.semantics

    def sample(self, generator):
        u = self.uniform(generator, 5)
        order = self.uniform(generator, 4).argsort(dim=1)
        on = u[:, 0] < self.p
        factors = {name: torch.where(on, lo + (hi - lo) * u[:, 1 + i], rest)
                   for i, (name, lo, hi, rest) in enumerate(zip(STRENGTHS, self.low, self.high, self.rest))}
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
                x = self.kernels[i](x, factors[i])
        return x

    def select(self, x, params):
        """The random order per sample, vectorized over the batch in the slots of `SLOTS`.

        torchvision: brightness, contrast and saturation are each a per-sample affine map of the
        RGB values (`color.jitter_affine`), and every jittered sample shifts its hue exactly once.
        So each sample's order is laid onto the slots (`_slot_table`): the sub-ops it runs before
        its hue at slots 0..2, the hue at slot 3, those after at 4..6. At an affine slot every
        sample runs the one map it put there (the identity where none: exactly x); at the hue slot
        the samples that drew the jitter shift their hue. One hue pass and six affine passes
        instead of each sub-op at each of the four order positions (16 passes).

        tf: brightness and contrast are affine with a diagonal matrix (`color.scale_shift`: the
        offset per channel holds the delta or the channel means); saturation and hue go through
        one kernel (`color.shift_hue` with a saturation factor, masked to the samples that put
        one of them there). Both keep the HSV value, and each moves one other HSV coordinate
        (the saturation, clipped at 1, or the hue), so next to each other in an order they commute
        and run in one pass; the clip after each is the identity on their outputs. The orders then
        fit four affine and two HSV slots (AQAAQA) instead of each sub-op at each position.
        """
        code = self.block_key(params)
        plan = torch.where((code >= 0)[:, None], self.slot_table[code.clamp_min(0)], -1)  # (N, slots)
        for slot, kind in enumerate(self.slots):
            sub_op = plan[:, slot]
            if kind == "hue":
                if self.active[HUE]:
                    x = color.shift_hue(x, params["hue"], where=sub_op == HUE)
            elif kind == "hsv":
                if self.active[SATURATION] or self.active[HUE]:
                    x = self._hsv(x, sub_op, params)
            elif self.tf:
                if self.active[BRIGHTNESS] or self.active[CONTRAST]:
                    x = self._tf_affine(x, sub_op, params)
            elif self.active[BRIGHTNESS] or self.active[CONTRAST] or self.active[SATURATION]:
                x = self._affine(x, sub_op, params)
        return x

    def _factor(self, sub_op, params, i, rest=1.0):
        """The drawn value where this slot runs sub-op i, `rest` (the identity) elsewhere."""
        return torch.where((sub_op == i) & self.active[i], params[STRENGTHS[i]], rest)

    def _affine(self, x, sub_op, params):
        """Per sample, brightness, contrast or saturation as `sub_op` (N,) says, else nothing."""
        contrast = self._factor(sub_op, params, CONTRAST)  # around the mean luma of this slot's input
        mean = color.mean_luma(x) if self.active[CONTRAST] else None
        matrix, offset = color.jitter_affine(self._factor(sub_op, params, BRIGHTNESS), contrast,
                                             self._factor(sub_op, params, SATURATION), mean)
        return color.affine(x, matrix, offset)

    def _tf_affine(self, x, sub_op, params):
        """Per sample, TF's brightness (x + delta) or contrast (f x + (1 - f) m_c, m_c the channel
        means of this slot's input) as `sub_op` says, else nothing (scale 1, offset 0: exactly x)."""
        offset = self._factor(sub_op, params, BRIGHTNESS, 0.0)[:, None].expand(-1, 3)
        if self.active[CONTRAST]:
            contrast = self._factor(sub_op, params, CONTRAST)
            offset = offset + (1 - contrast)[:, None] * color.channel_means(x)
        else:
            contrast = torch.ones_like(offset[:, 0])
        return color.scale_shift(x, contrast, offset)

    def _hsv(self, x, sub_op, params):
        """Per sample, TF's saturation, the hue shift or both as `sub_op` says, else nothing (copied)."""
        both = sub_op == SATURATION_AND_HUE
        saturation, hue = (sub_op == SATURATION) | both, (sub_op == HUE) | both
        factor = torch.where(saturation, params["saturation"], 1.0) if self.active[SATURATION] else None
        turns = torch.where(hue, params["hue"], 0.0) if self.active[HUE] else torch.zeros_like(params["hue"])
        return color.shift_hue(x, turns, where=saturation | hue, saturation=factor)


def _slot_table(slots: tuple[str, ...], kinds: tuple[str, ...]) -> torch.Tensor:
    """(256, len(slots)) int64: for each order (as its base-4 code, `block_key`), the sub-op of each
    slot of `slots` (-1: none; `SATURATION_AND_HUE`: both), sub-op i going to a slot of kind
    `kinds[i]`, two "hsv" sub-ops next to each other in the order to one slot. Each order is laid
    on the earliest slots that keep it in order (a slot that runs nothing leaves a sample exactly
    as it was, so which slots does not change the values). Built once on the host; the 24 orders
    fill 24 of its rows."""
    table = torch.full((256, len(slots)), -1, dtype=torch.int64)
    for order in itertools.permutations(range(4)):
        steps: list[int] = []
        for i in order:
            if steps and kinds[i] == "hsv" and steps[-1] in (SATURATION, HUE) and kinds[steps[-1]] == "hsv":
                steps[-1] = SATURATION_AND_HUE
            else:
                steps.append(i)
        row, at = [-1] * len(slots), 0
        for i in steps:
            kind = "hsv" if i == SATURATION_AND_HUE else kinds[i]
            at = slots.index(kind, at)  # a ValueError here: `slots` misses this order
            row[at] = i
            at += 1
        table[sum(i << shift for i, shift in zip(order, (6, 4, 2, 0)))] = torch.tensor(row)
    return table
