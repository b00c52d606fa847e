"""The grid-tile primitive of jigsaw, relative patch location and CPC: patches cut from a square
crop at cell-jittered or strided positions, in one gather (no per-sample loop, no host sync)."""

from __future__ import annotations

import torch
from einops import rearrange


def grid_patches(images: torch.Tensor, *, patch: int, grid: int | None = None, stride: int | None = None,
                 jitter: bool = True, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut (B, C, S, S) square images into patches of side `patch`.

    Either `grid` = n: an n x n grid of cells of side S // n (the remainder of S beyond n cells
    is left out at the bottom and right), one patch per cell at an offset drawn uniformly in
    0..cell - patch on each axis from `generator` (independently per image and cell; the
    reference's "gap": 85-px cells, 64-px patches, jitter 0..21), or centred in its cell when
    `jitter` is False. Or `stride`: overlapping patches at every multiple of `stride` that fits
    (CPC: patch 64, stride 32 on 256 px -> 7 x 7).

    Returns the patches (B, P, C, patch, patch), row-major over the grid (P = n * n), and their
    boxes (B, P, 2) int64: (top, left) of each patch in the image.
    """
    if (grid is None) == (stride is None):
        raise ValueError("give grid (cells with one patch each) or stride (overlapping patches), not both")
    batch, _, height, width = images.shape
    if height != width:
        raise ValueError(f"grid patches are cut from square images, got {height} x {width}")
    side, device = height, images.device
    if not 1 <= patch <= side:
        raise ValueError(f"patch must be between 1 and the image side {side}, got {patch}")
    if grid is not None:
        if grid < 1 or side // grid < patch:
            raise ValueError(f"a {grid} x {grid} grid on {side} px has cells of {side // max(grid, 1)} px, "
                             f"smaller than the patch of {patch} px")
        cell = side // grid
        corners = torch.arange(grid, device=device) * cell          # (n,) each cell's top or left
        top = corners.repeat_interleave(grid).expand(batch, -1)    # (B, P), row-major
        left = corners.repeat(grid).expand(batch, -1)
        if jitter:
            shape = (2, batch, grid * grid)
            offset = torch.randint(cell - patch + 1, shape, generator=generator, device=device)
        else:
            offset = torch.full((2, batch, grid * grid), (cell - patch) // 2, device=device)
        top, left = top + offset[0], left + offset[1]
    else:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        starts = torch.arange(0, side - patch + 1, stride, device=device)
        top = starts.repeat_interleave(len(starts)).expand(batch, -1)
        left = starts.repeat(len(starts)).expand(batch, -1)
    span = torch.arange(patch, device=device)
    rows = (top[..., None] + span)[..., :, None]                   # (B, P, p, 1)
    cols = (left[..., None] + span)[..., None, :]                  # (B, P, 1, p)
    which = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    # Advanced indices around the channel slice put the channels last.
    patches = rearrange(images[which, :, rows, cols], "b n h w c -> b n c h w")
    return patches, torch.stack([top, left], dim=-1)
