"""Colorization (Zhang, Isola, Efros 2016, https://arxiv.org/abs/1603.08511): from the L channel of a
crop, classify the colour of every 4 x 4 pixels among the 313 in-gamut ab bins, with rare colours
weighted up.

Read from richzhang/colorization's Caffe training (`../shared/REFERENCE-wave2.md`, section 4) and
made here on the device from the loader's one view (crop + flip only): the CIE Lab of the crop
(`sslpipe.models.lab`, Kornia's formulas); the input L - 50 (`LightnessResNet`, the backbone); the
target the ab values subsampled by `stride` (a pick, not an average: the reference's stride-4 1x1
convolution of weight 1), soft-encoded onto their `neighbours` nearest bins with Gaussian weights
of `sigma` (`sslpipe.pretext.ab_bins`). The loss is the cross-entropy of the 313 logits against the
soft target, computed from the K indices and weights (a dense (B, 313, h, w) target would be 1 GB
per batch at 224 px), each pixel weighted by the rebalancing factor of its nearest bin and by its
image's non-gray mask (0 when no |a| or |b| exceeds `gray_threshold`: grayscale photos teach no
colour). Caffe applies the weight to the gradient only; here it is in the loss, whose gradient is
the same. Predictions come from the backbone's stride-8 map through `head`: a 4 x 4 stride-2
deconvolution to `head_width` channels, ReLU, a 3 x 3 convolution, ReLU (the reference's conv8),
and a 1 x 1 convolution to the 313 logits.

The rebalancing prior is computed over the training shards in one pass before the first step
(`on_epoch_start` of epoch 0: the nearest bins of every evaluation centre crop's subsampled ab
values, counted, smoothed by a Gaussian of `prior_sigma` over the bins, as the paper's), mixed with
the uniform by `gamma` (`rebalancing_factor`; the pass holds one row of 313 counts per image on the
host, 1.6 GB for ImageNet, until they are summed); it lives in the method's state (checkpoints) and is
written beside the run as `ab_prior.npy` (`artifacts`). `rebalance: false` weighs every pixel 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from kornia.color import lab_to_rgb
from torch import nn

from sslpipe.methods.base import FeatureExtractor, Method, Step, StepOutput
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models.lightness import LightnessResNet
from sslpipe.pipeline.batch import Batch
from sslpipe.pretext.ab_bins import AbBins, rebalancing_factor, smoothed_prior


@dataclass(frozen=True)
class ColorizationConfig:
    neighbours: int = 10          # bins of each target pixel's soft encoding (the reference's NN)
    sigma: float = 5.0            # their Gaussian weights' width, ab units
    stride: int = 4               # the target's subsampling of the view (ab at 1/4 resolution)
    rebalance: bool = True        # weigh pixels by the prior's rebalancing factor
    gamma: float = 0.5            # the prior's mix with the uniform (the reference's PriorFactor)
    alpha: float = 1.0            # the mixed prior's exponent, negated
    prior_sigma: float = 5.0      # the Gaussian smoothing of the counted prior, ab units (0: none)
    gray_threshold: float = 5.0   # an image is gray when no subsampled |a|, |b| exceeds this
    head_width: int = 256         # the channels of the deconvolution and the 3 x 3 convolution

    def __post_init__(self):
        if not 1 <= self.neighbours <= 49:   # the candidates `AbBins.soft_encode` scores
            raise ValueError(f"neighbours must be between 1 and 49, got {self.neighbours}")
        if self.sigma <= 0 or self.prior_sigma < 0 or self.gray_threshold < 0:
            raise ValueError(f"sigma must be > 0, prior_sigma and gray_threshold >= 0; got {self.sigma}, "
                             f"{self.prior_sigma}, {self.gray_threshold}")
        if self.stride < 1 or self.head_width < 1:
            raise ValueError(f"stride and head_width must be >= 1, got {self.stride} and {self.head_width}")
        if not 0 <= self.gamma <= 1 or self.alpha < 0:
            raise ValueError(f"gamma must be in [0, 1] and alpha >= 0, got {self.gamma} and {self.alpha}")


class BinCounts(nn.Module):
    """(B, 3, S, S) normalized evaluation crops -> (B, 313) float32 counts of the nearest bins of
    their ab values at the target's stride: what the prior is summed from."""

    def __init__(self, backbone: LightnessResNet, bins: AbBins, stride: int):
        super().__init__()
        self.lab, self.bins, self.stride = backbone.lab, bins, stride   # the conversion, not the weights

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        ab = self.lab(views)[:, 1:, ::self.stride, ::self.stride]
        nearest = self.bins.nearest(ab).flatten(1)
        counts = torch.zeros(len(nearest), len(self.bins), device=views.device)
        return counts.scatter_add_(1, nearest, torch.ones_like(nearest, dtype=counts.dtype))


def soft_cross_entropy(logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, Q, h, w) logits, (B, h, w, K) bin indices and their target weights -> (B, h, w) float32
    -sum_k weight_k log softmax(logits)[index_k]: the dense soft target's cross-entropy, from K of Q."""
    log_probability = F.log_softmax(logits.float(), dim=1).permute(0, 2, 3, 1)
    return -(weight * log_probability.gather(-1, index)).sum(-1)


class Colorization(Method):
    Config = ColorizationConfig
    example_backbone = "colorization_resnet18"

    def __init__(self, backbone, config: ColorizationConfig, *, global_batch: int,
                 samples: int | None = None):
        super().__init__(backbone)
        if not isinstance(backbone, LightnessResNet):
            raise ValueError(f"colorization needs a backbone on the L channel (model.backbone: colorization_"
                             f"resnet18 or colorization_resnet50), got {type(backbone).__name__}")
        self.config = config
        self.bins = AbBins()
        upsampling = backbone.output_stride / config.stride   # the deconvolutions' total factor
        if upsampling < 1 or not math.log2(upsampling).is_integer():
            raise ValueError(f"method.stride={config.stride} must be the backbone's output stride "
                             f"{backbone.output_stride} over a power of 2")
        width, layers, cin = config.head_width, [], backbone.num_features
        for _ in range(int(math.log2(upsampling))):
            layers += [nn.ConvTranspose2d(cin, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            cin = width
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True),
                   nn.Conv2d(width, len(self.bins), 1)]
        self.head = nn.Sequential(*layers)
        # The prior over the training shards (all zero until `on_epoch_start` counts it) and its factors.
        self.register_buffer("prior", torch.zeros(len(self.bins), dtype=torch.float64))
        self.register_buffer("factor", torch.ones(len(self.bins)))

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="the L input and the ab target are the same crop")

    def on_epoch_start(self, epoch: int, extract: FeatureExtractor) -> None:
        if not self.config.rebalance or bool(self.prior.sum() > 0):   # counted once, then checkpointed
            return
        counts = extract(BinCounts(self.backbone, self.bins, self.config.stride)).double().sum(0)
        prior = smoothed_prior(counts.numpy(), self.config.prior_sigma)
        self.prior.copy_(torch.from_numpy(prior))
        self.factor.copy_(torch.from_numpy(rebalancing_factor(prior, self.config.gamma, self.config.alpha)))

    def artifacts(self) -> dict[str, np.ndarray]:
        if not self.config.rebalance:
            return {}
        return {"ab_prior": self.prior.cpu().numpy(),
                "ab_rebalancing_factor": self.factor.double().cpu().numpy()}

    def targets(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) Lab -> the soft target's (B, h, w, K) bin indices and weights, and the (B, h, w)
        pixel weights (rebalancing factor x non-gray mask), h = w = S / stride."""
        ab = lab[:, 1:, ::self.config.stride, ::self.config.stride]
        index, weight = self.bins.soft_encode(ab, self.config.neighbours, self.config.sigma)
        colourful = (ab.abs() > self.config.gray_threshold).flatten(1).any(1)        # (B,)
        factor = self.factor[index[..., 0]] if self.config.rebalance else torch.ones_like(weight[..., 0])
        return index, weight, factor * colourful.view(-1, 1, 1)

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, S, S) normalized view; loss = the weighted soft cross-entropy of the
        (B, 313, S/stride, S/stride) logits."""
        views = batch.views[0]
        lab = self.backbone.lab(views)
        index, weight, pixel_weight = self.targets(lab)
        lightness = lab[:, :1]
        if views.is_contiguous(memory_format=torch.channels_last):
            lightness = lightness.contiguous(memory_format=torch.channels_last)
        logits = self.head(self.backbone.encode_lightness(lightness))
        if logits.shape[-2:] != index.shape[1:3]:   # a side not divisible by the output stride
            logits = F.interpolate(logits.float(), size=index.shape[1:3], mode="bilinear",
                                   align_corners=False)
        cross_entropy = soft_cross_entropy(logits, index, weight)
        loss = (pixel_weight * cross_entropy).mean()
        return StepOutput(loss, {"cross_entropy": cross_entropy.mean().detach(),
                                 "colourful_images": (pixel_weight.flatten(1).amax(1) > 0).float().mean()})

    def preview(self, batch: Batch, step: Step) -> list[list[tuple[str, torch.Tensor]]]:
        """Per image: the L input, and the target at 1/stride resolution, each pixel shown in the
        colour of its nearest bin (what the classes encode) under the image's own L."""
        views = batch.views[0].float().clamp(0, 1)   # the preview's views are not normalized
        lab = self.backbone.to_lab(views)
        index, _, pixel_weight = self.targets(lab)
        small = lab[:, :1, ::self.config.stride, ::self.config.stride]
        binned = torch.cat([small, self.bins.centres[index[..., 0]].permute(0, 3, 1, 2)], dim=1)
        side = f"{binned.shape[-1]}x{binned.shape[-2]}"
        # Shown at the view's size, each target pixel a stride x stride block.
        target = F.interpolate(lab_to_rgb(binned).clamp(0, 1), scale_factor=self.config.stride,
                               mode="nearest")
        rows = []
        for view, light, colour, weight in zip(views, lab[:, :1] / 100, target, pixel_weight):
            gray = "" if bool(weight.amax() > 0) else ", gray: no loss"
            rows.append([("L input", light.expand(3, -1, -1)), (f"ab target {side}{gray}", colour),
                         ("view", view)])
        return rows
