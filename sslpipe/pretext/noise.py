"""The denoising autoencoder's corruptions (Vincent et al. 2008/2010) on a batch of images in
[0, 1], one kind and one strength per image, all drawn from a generator; no per-sample loop.

    noisy, kind, strength = corrupt(clean, KINDS, {"gaussian": 0.5, ...}, generator)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

# kind -> what its strength is: the Gaussian's std; the share of pixels set to 0 or 1
# (salt and pepper, half each); the share of pixels set to 0 (masking noise, all channels).
KINDS = ("gaussian", "salt_pepper", "mask")


def corrupt(images: torch.Tensor, kinds: Sequence[str], max_strength: Mapping[str, float],
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) images in [0, 1] -> the noisy images (clamped to [0, 1]), each image's kind
    (B,) int64 (an index into `kinds`) and strength (B,), uniform in [0, max_strength[kind]]."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"noise kinds must be a non-empty list of {', '.join(KINDS)}; got {list(kinds)}")
    batch, _, height, width = images.shape
    device, dtype = images.device, images.dtype
    kind = torch.randint(len(kinds), (batch,), generator=generator, device=device)
    strength = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    for i, name in enumerate(kinds):  # Python scalars: nothing is copied to the device
        strength = torch.where(kind == i, strength * float(max_strength[name]), strength)
    # Every kind's draws are made for every image (fixed shapes, no host sync); each image keeps its own.
    gaussian = torch.randn(images.shape, generator=generator, device=device, dtype=dtype)
    where = torch.rand((batch, 1, height, width), generator=generator, device=device, dtype=dtype)
    salt = torch.rand((batch, 1, height, width), generator=generator, device=device, dtype=dtype) < 0.5
    s = strength.view(batch, 1, 1, 1)
    noisy = images
    for i, name in enumerate(kinds):
        if name == "gaussian":
            made = images + s * gaussian
        elif name == "salt_pepper":
            made = torch.where(where < s, salt.to(dtype).expand_as(images), images)
        else:
            made = torch.where(where < s, torch.zeros_like(images), images)
        noisy = torch.where((kind == i).view(batch, 1, 1, 1), made, noisy)
    return noisy.clamp(0, 1), kind, strength
