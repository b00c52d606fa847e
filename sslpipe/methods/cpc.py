"""CPC v2 (Hénaff et al. 2020, https://arxiv.org/abs/1905.09272; CPC: van den Oord et al. 2018):
from the patches of the rows above, predict the features of the patches rows below.

Made here on the device from the loader's one square view of side S: a `grid` x `grid` grid of
overlapping patches (side 2S / (grid + 1), stride half of it: 64-px patches at stride 32 on
256 px give 7 x 7, CPC v1's), each augmented on its own (colour dropping, a flip, grayscale: v2's
patch-based augmentation, with the step's generator), encoded alone by the backbone (a ResNet with
layer norms, `model.backbone: resnet50_layernorm`, so that patches share no batch statistics) and
mean-pooled to z (B, D, grid, grid). A context network of masked 3x3 convolutions (PixelCNN-style
residual blocks: position (i, j) sees rows <= i only) gives c; for each row offset k in
`offsets`, a 1x1 convolution W_k predicts from c at row i the target of row i + k (targets: a
1x1 convolution of z to `target_dim`, as Lightning Bolts' CPCTask), scored by InfoNCE against
every patch position of every image of the local batch; the loss sums over offsets (and
directions). `directions=4` also predicts upwards and sideways (the grid rotated, a context
network and predictors per direction), as CPC v2. Offset 1 is left out by default: overlapping
neighbours share half their pixels (Bolts' loops start at 2 as well).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sslpipe.methods.base import Method, Step, StepOutput
from sslpipe.methods.views import ViewsNeeded
from sslpipe.pipeline.batch import Batch
from sslpipe.pipeline.spec import IMAGENET_MEAN, IMAGENET_STD
from sslpipe.pretext import drop_colors, grid_patches
from sslpipe.pretext.patch_ops import flip_patches, grayscale_patches


@dataclass(frozen=True)
class CPCConfig:
    grid: int = 7                       # patches per side
    offsets: tuple[int, ...] = (2, 3, 4, 5)   # rows ahead predicted (CPC: up to 5)
    directions: int = 1                 # 1: downwards (CPC v1); 4: all four (CPC v2)
    target_dim: int = 64                # the targets' and predictions' width (Bolts)
    context_width: int = 256            # the context network's channels
    context_blocks: int = 5             # its masked residual blocks (Bolts' PixelCNN: 5)
    color_drop: float = 1.0             # per patch: keep one channel, the others faint noise
    flip: float = 0.5                   # per patch
    grayscale: float = 0.25             # per patch (CPC v2's and Bolts' 0.25)
    mean: tuple[float, float, float] = IMAGENET_MEAN   # the views' normalization (for grayscale)
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.grid < 2:
            raise ValueError(f"grid must be >= 2 patches per side, got {self.grid}")
        if not self.offsets or min(self.offsets) < 1 or max(self.offsets) >= self.grid:
            raise ValueError(f"offsets must be rows ahead between 1 and grid - 1 = {self.grid - 1}, "
                             f"got {list(self.offsets)}")
        if self.directions not in (1, 4):
            raise ValueError(f"directions must be 1 or 4, got {self.directions}")
        for name in ("target_dim", "context_width", "context_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("color_drop", "flip", "grayscale"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")


class RowCausalConv(nn.Conv2d):
    """A 3x3 convolution whose output at row i sees input rows <= i only (the kernel's row below
    the centre is zeroed): the context network's masked convolution."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1)
        mask = torch.ones_like(self.weight)
        mask[:, :, 2] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=1)


class ContextBlock(nn.Module):
    """x + 1x1(ReLU(masked 3x3(ReLU(1x1(ReLU(x)))))), the 3x3 at half the width."""

    def __init__(self, channels: int):
        super().__init__()
        half = max(1, channels // 2)
        self.reduce = nn.Conv2d(channels, half, 1)
        self.mix = RowCausalConv(half)
        self.expand = nn.Conv2d(half, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.relu(self.mix(F.relu(self.reduce(F.relu(x))))))


class Predictor(nn.Module):
    """One direction: the context network over z (B, D, n, n) and one 1x1 predictor per offset."""

    def __init__(self, features: int, config: CPCConfig):
        super().__init__()
        width = config.context_width
        self.context = nn.Sequential(nn.Conv2d(features, width, 1),
                                     *[ContextBlock(width) for _ in range(config.context_blocks)])
        self.predict = nn.ModuleList(nn.Conv2d(width, config.target_dim, 1) for _ in config.offsets)


def info_nce_rows(prediction: torch.Tensor, targets: torch.Tensor, offset: int) -> torch.Tensor:
    """InfoNCE of the predictions (B, t, n, n) at rows 0..n-1-offset for the targets (B, t, n, n)
    `offset` rows below, against every target position of every image: mean cross-entropy."""
    batch, _, n, _ = targets.shape
    candidates = rearrange(targets, "b t h w -> (b h w) t")
    queries = rearrange(prediction[:, :, :n - offset], "b t h w -> (b h w) t")
    logits = queries @ candidates.t()                                        # (B (n-k) n, B n n)
    image, row, col = torch.meshgrid(torch.arange(batch, device=targets.device),
                                     torch.arange(n - offset, device=targets.device),
                                     torch.arange(n, device=targets.device), indexing="ij")
    labels = (image * n * n + (row + offset) * n + col).flatten()
    return F.cross_entropy(logits.float(), labels)


class CPC(Method):
    Config = CPCConfig

    def __init__(self, backbone, config: CPCConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        self.target = nn.Conv2d(backbone.num_features, config.target_dim, 1)
        self.directions = nn.ModuleList(Predictor(backbone.num_features, config)
                                        for _ in range(config.directions))
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="the patch grid is cut from one square crop per image")

    def patches(self, images: torch.Tensor, step: Step) -> torch.Tensor:
        """(B, 3, S, S) crops -> (B, n * n, 3, p, p) augmented patches, row-major over the grid."""
        n, side = self.config.grid, images.shape[-1]
        stride = side // (n + 1)
        if stride < 1:
            raise ValueError(f"a {n} x {n} grid of overlapping patches needs views of at least {n + 1} px, "
                             f"got {side}")
        patches, _ = grid_patches(images, patch=2 * stride, stride=stride)
        flat = patches.flatten(0, 1)
        if self.config.color_drop:
            flat = drop_colors(flat, self.config.color_drop, step.generator)
        if self.config.flip:
            flat = flip_patches(flat, self.config.flip, step.generator)
        if self.config.grayscale:
            flat = grayscale_patches(flat, self.config.grayscale, self.mean, self.std, step.generator)
        return flat.view_as(patches)

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, S, S) view; loss = sum over directions and offsets of InfoNCE."""
        patches = self.patches(batch.views[0], step)
        n = self.config.grid
        z = rearrange(self.backbone(patches.flatten(0, 1)), "(b h w) d -> b d h w", h=n, w=n)
        losses = []
        for turns, direction in enumerate(self.directions):   # turn the grid: "below" is another side
            zt = torch.rot90(z, turns, dims=(2, 3))
            targets, context = self.target(zt), direction.context(zt)
            for offset, predict in zip(self.config.offsets, direction.predict):
                losses.append(info_nce_rows(predict(context), targets, offset))
        loss = torch.stack(losses).sum()
        return StepOutput(loss, {"nce_per_offset": (loss / len(losses)).detach(),
                                 "candidates": float(patches.shape[0] * n * n)})

    def preview(self, batch: Batch, step: Step) -> list[list[tuple[str, torch.Tensor]]]:
        """Per image: the crop and its augmented patch grid (patches framed, in place)."""
        crops = batch.views[0]
        n = self.config.grid
        shown = self.patches((crops - self.mean) / self.std, step) * self.std + self.mean
        framed = F.pad(shown, (1, 1, 1, 1), value=1.0)
        grids = rearrange(framed, "b (gh gw) c h w -> b c (gh h) (gw w)", gh=n)
        return [[("crop", crop), (f"{n} x {n} patches", grid)] for crop, grid in zip(crops, grids)]
