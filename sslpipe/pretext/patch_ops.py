"""Photometric ops on many small patches at once, (N, C, p, p) with per-patch randomness from a
generator: the anti-shortcut steps of the patch-based pretext tasks."""

from __future__ import annotations

import torch

LUMA = (0.2989, 0.587, 0.114)  # the pipeline's grayscale weights (torchvision's)


def normalized_patches(patches: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(..., C, p, p): each channel of each patch to mean 0 and std 1 over its p x p (jigsaw's
    per-tile normalisation, against matching tiles by their low-level statistics)."""
    mean = patches.mean(dim=(-2, -1), keepdim=True)
    std = patches.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (patches - mean) / (std + eps)


def drop_colors(patches: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 3, h, w): with probability `p` per patch, keep one channel drawn uniformly and replace
    the other two by Gaussian noise of 1/100 the kept channel's std (Doersch et al. 2015, section
    4: "colour dropping", against chromatic aberration giving away a patch's place in the image)."""
    n = patches.shape[0]
    apply = torch.rand(n, generator=generator, device=patches.device) < p
    keep = torch.randint(3, (n,), generator=generator, device=patches.device)
    kept_std = patches.std(dim=(-2, -1), unbiased=False).gather(1, keep[:, None])       # (N, 1)
    noise = torch.randn(patches.shape, generator=generator, device=patches.device, dtype=patches.dtype)
    noise = noise * (kept_std / 100).view(n, 1, 1, 1)
    kept = (keep.view(n, 1) == torch.arange(3, device=patches.device)).view(n, 3, 1, 1)  # one_hot syncs
    return torch.where(apply.view(n, 1, 1, 1) & ~kept, noise, patches)


def flip_patches(patches: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, C, h, w): each patch mirrored left-right with probability `p`."""
    apply = torch.rand(patches.shape[0], generator=generator, device=patches.device) < p
    return torch.where(apply.view(-1, 1, 1, 1), patches.flip(-1), patches)


def grayscale_patches(patches: torch.Tensor, p: float, mean: torch.Tensor, std: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 3, h, w) normalized with `mean` and `std` ((1, 3, 1, 1) each): with probability `p` per
    patch, its luma (torchvision's weights) in all three channels, normalized again."""
    r, g, b = (patches * std + mean).unbind(1)
    luma = (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)   # Python scalars: no host copy
    gray = (luma - mean) / std
    apply = torch.rand(patches.shape[0], generator=generator, device=patches.device) < p
    return torch.where(apply.view(-1, 1, 1, 1), gray, patches)
