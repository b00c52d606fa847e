"""The photometric operations, with torchvision's semantics, on float32 batches in [0, 1].

Each function takes `x` (n, 3, H, W) and per-sample parameters of shape (n,), and returns a new
(n, 3, H, W) tensor (the input is left alone). They are written for speed on both devices: plain
tensor arithmetic with no host synchronisation, and as few passes over the data as the formula
allows (Kornia's hue, for one, goes through a full HSV conversion and back; the timings of both
are in docs/benchmarks.md, from `python tools/bench_color.py`). The tests check them against
reference formulas and against Kornia.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma as torchvision rounds it (`_rgb_to_grayscale`: 0.2989 R); Kornia uses 0.299.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, 1, H, W) luma."""
    r, g, b = x.split(1, dim=1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma in all three channels (torchvision's `rgb_to_grayscale(x, 3)`)."""
    return grayscale(x).expand_as(x).contiguous()


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f * x)."""
    return (x * _per_sample(factor)).clamp_(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f * x + (1 - f) * m), m the mean luma of each image."""
    # The mean luma is the luma-weighted sum of the channel means: one reduction over the pixels.
    r, g, b = x.mean(dim=(2, 3)).unbind(dim=1)
    mean = r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]
    return (x * _per_sample(factor)).add_(_per_sample((1 - factor) * mean)).clamp_(0, 1)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f * x + (1 - f) * luma(x)): towards grayscale for f < 1, away from it for f > 1."""
    return (x * _per_sample(factor)).addcmul_(grayscale(x), _per_sample(1 - factor)).clamp_(0, 1)


def shift_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by `turns` of a full turn, keeping saturation and value.

    Value v = max, chroma c = max - min, and the hue h in sectors ([0, 6), red at 0, green at 2,
    blue at 4) from the largest channel. After the shift, each channel is v - c * clamp(d - 1, 0, 1),
    d the distance on the hue circle from h to the channel's own hue: the closed form of HSV ->
    RGB, with no per-sector branches. Gray pixels (c = 0) keep their value whatever the hue, and
    black ones stay finite: no 0/0 is formed.
    """
    r, g, b = x.unbind(dim=1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    safe = chroma.clamp_min(1e-12)  # where c = 0 the numerators below are 0 too
    # The formula of the largest channel: blue's, replaced by green's where green is the largest,
    # then by red's (on ties the formulas agree). The masks are 0/1 floats: on the CPU, bool
    # comparisons and torch.where are several times slower than arithmetic.
    green_max = torch.ge(g, value, out=torch.empty_like(value))
    red_max = torch.ge(r, value, out=torch.empty_like(value))
    hue = (r - g).div_(safe).add_(4)
    hue.addcmul_(green_max, (b - r).div_(safe).add_(2).sub_(hue))
    hue.addcmul_(red_max, (g - b).div_(safe).sub_(hue))
    hue.add_(turns.view(-1, 1, 1) * 6)
    hue.sub_(hue.div(6).floor_().mul_(6))  # back into [0, 6)
    distances = (3 - (hue - 3).abs_(), (hue - 2).abs_(), (hue - 4).abs_())  # to red, green, blue
    out = torch.empty_like(x)
    for channel, distance in enumerate(distances):
        torch.sub(value, distance.sub_(1).clamp_(0, 1).mul_(chroma), out=out[:, channel])
    return out


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """1 - x where x >= threshold."""
    return torch.where(x >= _per_sample(threshold), 1 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """torchvision's GaussianBlur with one sigma per sample, reflect padding.

    Kernel exp(-t^2 / 2 sigma^2) over t in [-(k-1)/2, (k-1)/2], normalized to sum 1, applied as
    two 1-D passes (equal to torchvision's 2-D outer-product kernel). Each pass is one grouped
    convolution over all the samples' channels (groups = 3n), with each sample's own kernel: no
    per-sample loop and no host sync (Kornia's `RandomGaussianBlur` syncs).
    """
    n, c, h, w = x.shape
    offsets = torch.arange(kernel_size, dtype=torch.float32, device=x.device) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets / sigma[:, None]) ** 2 / 2)  # (n, k)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    weight = kernel[:, None].expand(n, c, kernel_size).reshape(n * c, 1, kernel_size)  # per channel
    pad = kernel_size // 2
    x = x.reshape(1, n * c, h, w)  # the samples' channels as the groups of one image
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), weight[:, :, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), weight[:, :, :, None], groups=n * c)
    return x.view(n, c, h, w)
