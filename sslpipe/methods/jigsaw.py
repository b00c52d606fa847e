"""Jigsaw puzzles (Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246): nine tiles of a crop,
shuffled by one of a fixed set of permutations; the network names the permutation.

The tiles are made here, on the device, from the loader's one square view: a 3 x 3 grid of cells,
one patch per cell at a random offset inside it (bbrattoli/JigsawPuzzlePytorch: 85-px cells of a
255-px crop, 64-px patches, a gap of 0..21 px against edge continuity), each tile normalised by
its own per-channel mean and std (against low-level shortcuts; the reference's
`JigsawImageLoader`), then put in the order of permutation k of the max-Hamming set
(`sslpipe.pretext.permutations`), k drawn per image from the step's generator: position t holds
tile `table[k][t]`. The backbone encodes each tile alone (a shared, "context-free" tower); the
tiles' features, each through a Linear + BN + ReLU, are concatenated in position order and
classified into the `permutations` classes (VISSL's ResNet-50 head: per tile 2048 -> 1000,
then 9000 -> the number of permutations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from sslpipe.methods.base import Method, Step, StepOutput
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import mlp
from sslpipe.pipeline.batch import Batch
from sslpipe.pretext import grid_patches
from sslpipe.pretext.patch_ops import normalized_patches
from sslpipe.pretext.permutations import load_permutations

GRID = 3  # 3 x 3 tiles, the permutation tables' 9


@dataclass(frozen=True)
class JigsawConfig:
    permutations: int = 1000        # classes: the first this many of the max-Hamming set (seed 0;
                                    # beyond the shipped 1000, generated at start-up: ~15 s per 1000)
    patch_of_cell: float = 64 / 85  # patch side / cell side (the reference: 64 of 85 px)
    tile_dim: int = 1000            # each tile's features -> Linear + BN + ReLU to this (VISSL: 1000)
    hidden: tuple[int, ...] = ()    # widths between the concatenated tiles and the classes
    normalize_tiles: bool = True    # each tile by its own per-channel mean and std

    def __post_init__(self):
        if not 2 <= self.permutations <= 362880:
            raise ValueError(f"permutations must be between 2 and 9! = 362880, got {self.permutations}")
        if not 0 < self.patch_of_cell <= 1:
            raise ValueError(f"patch_of_cell must be in (0, 1], got {self.patch_of_cell}")
        if self.tile_dim < 1 or (self.hidden and min(self.hidden) < 1):
            raise ValueError(f"tile_dim and hidden widths must be >= 1, got {self.tile_dim} and "
                             f"{list(self.hidden)}")


def shuffled(tiles: torch.Tensor, table: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 9, C, p, p) tiles in grid order -> the same tiles with position t holding tile
    `table[k][t]`, and the (B,) int64 permutation indices k drawn uniformly from `generator`."""
    labels = torch.randint(len(table), (tiles.shape[0],), generator=generator, device=tiles.device)
    order = table[labels]                                             # (B, 9)
    return torch.take_along_dim(tiles, order.view(*order.shape, 1, 1, 1), dim=1), labels


class Jigsaw(Method):
    Config = JigsawConfig

    def __init__(self, backbone, config: JigsawConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        # The greedy set grows by one pick at a time: its first k rows are the set of k.
        table = load_permutations(max(1000, config.permutations))[:config.permutations]
        # A buffer, saved with the model: a checkpoint names its classes.
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table)))
        self.tile_head = mlp([backbone.num_features, config.tile_dim], norm_last=True)
        self.classifier = mlp([GRID * GRID * config.tile_dim, *config.hidden, config.permutations])

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="the tiles are cut from one square crop per image")

    def tiles(self, images: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) crops -> shuffled tiles (B, 9, C, p, p) and their permutation labels (B,)."""
        cell = images.shape[-1] // GRID
        patch = max(1, round(cell * self.config.patch_of_cell))
        tiles, _ = grid_patches(images, grid=GRID, patch=patch, generator=step.generator)
        if self.config.normalize_tiles:
            tiles = normalized_patches(tiles.float()).to(images.dtype)
        return shuffled(tiles, self.table, step.generator)

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, S, S) view; loss = CE over the permutation classes."""
        tiles, labels = self.tiles(batch.views[0], step)
        features = self.backbone(rearrange(tiles, "b t c h w -> (b t) c h w"))   # one BN batch of 9B
        per_tile = F.relu(self.tile_head(features))
        logits = self.classifier(rearrange(per_tile, "(b t) d -> b (t d)", t=GRID * GRID)).float()
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean().detach()
        return StepOutput(loss, {"permutation_accuracy": accuracy, "tile_px": float(tiles.shape[-1])})

    def preview(self, batch: Batch, step: Step) -> list[list[tuple[str, torch.Tensor]]]:
        """Per image: the crop, and its tiles as the network gets them (shuffled, each stretched to
        [0, 1] for display when normalised) with the permutation index and order."""
        crops = batch.views[0]
        tiles, labels = self.tiles(crops, step)
        if self.config.normalize_tiles:
            low = tiles.amin(dim=(-3, -2, -1), keepdim=True)
            tiles = (tiles - low) / (tiles.amax(dim=(-3, -2, -1), keepdim=True) - low).clamp_min(1e-6)
        framed = F.pad(tiles, (1, 1, 1, 1), value=1.0)   # a white line between the tiles
        puzzles = rearrange(framed, "b (gh gw) c h w -> b c (gh h) (gw w)", gh=GRID)
        order = ["".join(map(str, row)) for row in self.table[labels].tolist()]   # tile at each position
        return [[("crop", crop), (f"permutation {k}: {o}", puzzle)]
                for crop, k, o, puzzle in zip(crops, labels.tolist(), order, puzzles)]
