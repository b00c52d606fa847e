"""Relative patch location (Doersch, Gupta, Efros 2015, https://arxiv.org/abs/1505.05192): given the
centre patch of a 3 x 3 grid and one of its eight neighbours, say where the neighbour is.

In mmselfsup's ResNet-50 form (`RandomPatchWithLabels`, `RelativeLoc`, `RelativeLocNeck`), made
here on the device from the loader's one square view: a 3 x 3 grid of cells (85 px of a 255-px
crop), one patch per cell at a random offset inside it (64 px: a gap of 0..21 px, so that edges do
not continue across patches), the backbone on every patch, then each (centre, neighbour) pair's
features concatenated -> Linear 4096 + BN + ReLU + Dropout -> Linear 8. Label j is the neighbour's
place in row-major order with the centre left out (0 top-left ... 7 bottom-right). `pairs="all"`
takes the eight pairs of every image (mmselfsup); `"one"` one neighbour per image drawn from the
step's generator (the original). `color_drop` applies Doersch's colour dropping per patch
(`sslpipe.pretext.drop_colors`; mmselfsup relies on grayscale p 0.66 in the spec instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslpipe.methods.base import Method, Step, StepOutput
from sslpipe.methods.views import ViewsNeeded
from sslpipe.pipeline.batch import Batch
from sslpipe.pretext import drop_colors, grid_patches

GRID, CENTRE = 3, 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # grid cells in label order: label j is cell j + (j >= 4)


@dataclass(frozen=True)
class RelativeLocConfig:
    pairs: Literal["all", "one"] = "all"   # the 8 pairs of each image, or one random neighbour
    patch_of_cell: float = 64 / 85        # patch side / cell side (mmselfsup: 64 of 85 px)
    hidden: int = 4096                    # the pair head's hidden width (RelativeLocNeck)
    dropout: float = 0.5
    color_drop: float = 0.0               # probability per patch of Doersch's colour dropping

    def __post_init__(self):
        if self.pairs not in ("all", "one"):
            raise ValueError(f"pairs must be all or one, got {self.pairs!r}")
        if not 0 < self.patch_of_cell <= 1:
            raise ValueError(f"patch_of_cell must be in (0, 1], got {self.patch_of_cell}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        for name in ("dropout", "color_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


class RelativeLoc(Method):
    Config = RelativeLocConfig

    def __init__(self, backbone, config: RelativeLocConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        self.head = nn.Sequential(nn.Linear(2 * backbone.num_features, config.hidden, bias=False),
                                  nn.BatchNorm1d(config.hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(config.dropout), nn.Linear(config.hidden, len(NEIGHBOURS)))

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="the patches are cut from one square crop per image")

    def patches(self, images: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) crops -> (B, 1 + K, C, p, p): the centre patch then K neighbours (K = 8, or
        1 for pairs="one"), and the (B, K) int64 labels of the neighbours."""
        cell = images.shape[-1] // GRID
        patch = max(1, round(cell * self.config.patch_of_cell))
        patches, _ = grid_patches(images, grid=GRID, patch=patch, generator=step.generator)
        batch, device = images.shape[0], images.device
        if self.config.pairs == "all":
            labels = torch.arange(len(NEIGHBOURS), device=device).expand(batch, -1)
        else:
            labels = torch.randint(len(NEIGHBOURS), (batch, 1), generator=step.generator, device=device)
        cells = labels + (labels >= CENTRE).long()    # (B, K) grid cells: NEIGHBOURS[label], no host copy
        cells = torch.cat([torch.full((batch, 1), CENTRE, device=device), cells], dim=1)
        picked = torch.take_along_dim(patches, cells.view(*cells.shape, 1, 1, 1), dim=1)
        if self.config.color_drop > 0:
            dropped = drop_colors(picked.flatten(0, 1), self.config.color_drop, step.generator)
            picked = dropped.view_as(picked)
        return picked, labels

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, S, S) view; loss = CE over the 8 places, mean over the pairs."""
        patches, labels = self.patches(batch.views[0], step)
        features = self.backbone(patches.flatten(0, 1)).unflatten(0, patches.shape[:2])  # one BN batch
        centre, neighbours = features[:, :1], features[:, 1:]
        pairs = torch.cat([centre.expand_as(neighbours), neighbours], dim=-1).flatten(0, 1)
        logits = self.head(pairs).float()
        loss = F.cross_entropy(logits, labels.flatten())
        accuracy = (logits.argmax(1) == labels.flatten()).float().mean().detach()
        return StepOutput(loss, {"location_accuracy": accuracy, "pairs": float(labels.numel())})

    def preview(self, batch: Batch, step: Step) -> list[list[tuple[str, torch.Tensor]]]:
        """Per image: the crop, the centre patch, and each neighbour with its label."""
        crops = batch.views[0]
        patches, labels = self.patches(crops, step)
        return [[("crop", crop), ("centre", image[0])]
                + [(f"label {k}", patch) for k, patch in zip(label.tolist(), image[1:])]
                for crop, image, label in zip(crops, patches, labels)]
