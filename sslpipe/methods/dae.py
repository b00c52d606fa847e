"""Denoising autoencoder (Vincent et al. 2008, https://dl.acm.org/doi/10.1145/1390156.1390294;
2010, JMLR 11): corrupt the crop, encode it with the backbone, decode the pooled code back to the
clean crop.

There is no canonical ImageNet recipe (`../shared/REFERENCE-wave2.md`, section 5): this follows
the classic DAE's corruptions, made here on the device from the loader's one view (the clean
target is that same crop): per image one kind drawn uniformly from `noise` (Gaussian with std
s, salt and pepper on a share s of the pixels, masking noise zeroing a share s) and a strength s
uniform in [0, max], all from the step's generator, applied in [0, 1] pixel units (the view's
normalization undone with `mean`/`std`, the specs' default ImageNet statistics). The decoder is
light: the (B, D) code -> Linear to 256 x 4 x 4 -> [2x nearest upsampling, 3x3 conv, BN, ReLU]
until `side` is reached -> 3x3 conv to 3 channels, resized bilinearly to the view's side. Loss: MSE
against the clean normalized crop, or binary cross-entropy against the clean crop in [0, 1] (the
classic choice for inputs in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslpipe.methods.base import Method, Step, StepOutput
from sslpipe.methods.views import ViewsNeeded
from sslpipe.pipeline.batch import Batch
from sslpipe.pipeline.spec import IMAGENET_MEAN, IMAGENET_STD
from sslpipe.pretext.noise import KINDS, corrupt

SEED_SIDE, SEED_CHANNELS = 4, 256


@dataclass(frozen=True)
class DAEConfig:
    noise: tuple[str, ...] = KINDS          # the kinds each image draws one of
    gaussian: float = 0.5                   # the largest std (pixel units in [0, 1])
    salt_pepper: float = 0.3                # the largest share of pixels set to 0 or 1
    mask: float = 0.5                       # the largest share of pixels set to 0
    loss: Literal["mse", "bce"] = "mse"
    decoder_width: int = 64                 # channels of the last upsampling block (doubling upwards)
    side: int = 224                         # the decoder's output side, resized to the view's side
    mean: tuple[float, float, float] = IMAGENET_MEAN   # the views' normalization, undone for the noise
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        unknown = sorted(set(self.noise) - set(KINDS))
        if unknown or not self.noise:
            raise ValueError(f"noise must be a non-empty list of {', '.join(KINDS)}, got {list(self.noise)}")
        for name in ("gaussian", "salt_pepper", "mask"):
            if not 0 <= getattr(self, name) <= (1 if name != "gaussian" else math.inf):
                raise ValueError(f"{name} must be a strength >= 0 (a share <= 1), got {getattr(self, name)}")
        if self.loss not in ("mse", "bce"):
            raise ValueError(f"loss must be mse or bce, got {self.loss!r}")
        if self.decoder_width < 1 or self.side < 1 or min(self.std) <= 0:
            raise ValueError(f"decoder_width and side must be >= 1 and std > 0, got {self.decoder_width}, "
                             f"{self.side}, {list(self.std)}")


def upsampling_decoder(features: int, side: int, width: int) -> nn.Module:
    """(B, features) -> (B, 3, 4 x 2^k, ...), the first such side >= `side`: a Linear to 256 x 4 x 4,
    then k upsampling blocks."""
    blocks = max(0, math.ceil(math.log2(side / SEED_SIDE)))
    widths = [max(width, SEED_CHANNELS >> i) for i in range(blocks + 1)]
    layers: list[nn.Module] = [nn.Linear(features, SEED_CHANNELS * SEED_SIDE ** 2),
                               nn.Unflatten(1, (SEED_CHANNELS, SEED_SIDE, SEED_SIDE))]
    cin = SEED_CHANNELS
    for cout in widths[1:]:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv, nn.BatchNorm2d(cout), nn.ReLU(True)]
        cin = cout
    layers.append(nn.Conv2d(cin, 3, 3, padding=1))
    return nn.Sequential(*layers)


class DAE(Method):
    Config = DAEConfig

    def __init__(self, backbone, config: DAEConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        self.decoder = upsampling_decoder(backbone.num_features, config.side, config.decoder_width)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="the noisy input and the clean target are the same crop")

    def corrupted(self, views: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) normalized views -> the noisy views (normalized), each image's noise kind
        (an index into `config.noise`) and strength."""
        clean = views * self.std + self.mean
        strengths = {"gaussian": self.config.gaussian, "salt_pepper": self.config.salt_pepper,
                     "mask": self.config.mask}
        noisy, kind, strength = corrupt(clean, self.config.noise, strengths, step.generator)
        return (noisy - self.mean) / self.std, kind, strength

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, S, S) view, the clean target; loss = MSE (or BCE) of the
        reconstruction of its corrupted copy."""
        views = batch.views[0]
        noisy, _, strength = self.corrupted(views, step)
        output = self.decoder(self.backbone(noisy)).float()
        if output.shape[-2:] != views.shape[-2:]:
            output = F.interpolate(output, size=views.shape[-2:], mode="bilinear", align_corners=False)
        if self.config.loss == "mse":
            loss = F.mse_loss(output, views.float())
        else:   # the logits of each pixel's value in [0, 1]
            target = (views * self.std + self.mean).float().clamp(0, 1)
            loss = F.binary_cross_entropy_with_logits(output, target)
        return StepOutput(loss, {"mean_strength": strength.float().mean().detach()})

    def preview(self, batch: Batch, step: Step) -> list[list[tuple[str, torch.Tensor]]]:
        """Per image: the noisy input with its kind and strength, and the clean target."""
        views = batch.views[0]   # the preview's views are not normalized: undo nothing
        strengths = {"gaussian": self.config.gaussian, "salt_pepper": self.config.salt_pepper,
                     "mask": self.config.mask}
        noisy, kind, strength = corrupt(views, self.config.noise, strengths, step.generator)
        return [[(f"{self.config.noise[k]} {s:.2f}", x), ("clean target", clean)]
                for x, k, s, clean in zip(noisy, kind.tolist(), strength.tolist(), views)]
