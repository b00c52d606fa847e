"""The photometric operations, with torchvision's semantics, on float32 batches in [0, 1]; the
`tf_*` functions are TensorFlow's (`tf.image.adjust_*`, as BYOL's official JAX code writes them).

Each function takes `x` (n, 3, H, W) and per-sample parameters of shape (n,), and returns a new
(n, 3, H, W) tensor (the input is left alone). They are written for speed on both devices: plain
tensor arithmetic with no host synchronisation, and as few passes over the data as the formula
allows (Kornia's hue, for one, goes through a full HSV conversion and back; the timings of both
are in docs/benchmarks.md, from `python tools/bench_color.py`). The tests check them against
reference formulas and against Kornia.
"""

from __future__ import annotations

import functools

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


def mean_luma(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n,): each image's mean luma, the luma-weighted sum of the channel means
    (one reduction over the pixels)."""
    r, g, b = x.mean(dim=(2, 3)).unbind(dim=1)
    return r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f * x + (1 - f) * m), m the mean luma of each image."""
    return (x * _per_sample(factor)).add_(_per_sample((1 - factor) * mean_luma(x))).clamp_(0, 1)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f * x + (1 - f) * luma(x)): towards grayscale for f < 1, away from it for f > 1."""
    return (x * _per_sample(factor)).addcmul_(grayscale(x), _per_sample(1 - factor)).clamp_(0, 1)


def shift_hue(x: torch.Tensor, turns: torch.Tensor, where: torch.Tensor | None = None,
              saturation: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate the HSV hue by `turns` of a full turn, keeping saturation and value; with `where`
    ((n,) bool), only in those samples (the others are copied, in the same pass). `saturation`
    ((n,), TF semantics, see `tf_saturation`) also scales the HSV saturation, clipped to [0, 1]:
    the TF jitter's saturation and hue in one kernel (either or both per sample: they commute).

    Value v = max, chroma c = max - min, and the hue h in sectors ([0, 6), red at 0, green at 2,
    blue at 4) from the largest channel. After the shift, each channel is v - c * clamp(d - 1, 0, 1),
    d the distance on the hue circle from h to the channel's own hue: the closed form of HSV ->
    RGB, with no per-sector branches. Gray pixels (c = 0) keep their value whatever the hue, and
    black ones stay finite: no 0/0 is formed. The saturation f scales s = c / v to
    clamp(f s, 0, 1), i.e. the chroma c to min(max(f, 0) c, v), in the same closed form.
    """
    r, g, b = x.unbind(dim=1)
    low, value = torch.aminmax(x, dim=1)
    chroma = value - low
    new_chroma = chroma if saturation is None else \
        torch.minimum(chroma * saturation.clamp_min(0).view(-1, 1, 1), value)
    inverse = chroma.clamp_min(1e-12).reciprocal_()  # where c = 0 the numerators below are 0 too
    # The formula of the largest channel (on ties they agree): (g - b) / c for red, (b - r) / c + 2
    # for green, (r - g) / c + 4 for blue.
    red_max, green_max = r >= value, g >= value
    difference = torch.where(red_max, g - b, torch.where(green_max, b - r, r - g))
    sector = torch.where(red_max, 0.0, torch.where(green_max, 2.0, 4.0))
    hue = torch.addcmul(sector, difference, inverse).add_(turns.view(-1, 1, 1) * 6).remainder_(6)
    compiling = torch.compiler.is_compiling()  # there `out=` a strided slice is unsupported
    out = None if compiling else torch.empty_like(x)
    channels = []
    for channel, own in enumerate((0.0, 2.0, 4.0)):  # red, green, blue
        distance = hue.sub(own).abs_()
        if channel == 0:  # around the circle: h in [0, 6) is 6 - h from red the other way
            distance = torch.minimum(distance, 6 - distance)
        # (green's and blue's distances are not wrapped: past 3 the clamp saturates anyway)
        shifted = torch.addcmul(value, new_chroma, distance.sub_(1).clamp_(0, 1), value=-1)
        if compiling:
            kept = shifted if where is None else torch.where(where.view(-1, 1, 1), shifted, x[:, channel])
            channels.append(kept)
        elif where is None:
            out[:, channel] = shifted
        else:
            torch.where(where.view(-1, 1, 1), shifted, x[:, channel], out=out[:, channel])
    return torch.stack(channels, dim=1) if compiling else out


def tf_brightness(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """clamp(x + delta): `tf.image.adjust_brightness`, additive (torchvision's multiplies)."""
    return (x + _per_sample(delta)).clamp_(0, 1)


def channel_means(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, 3): each channel's mean over the pixels."""
    return x.mean(dim=(2, 3))


def tf_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f * (x - m_c) + m_c), m_c the mean of each channel over the image:
    `tf.image.adjust_contrast` (torchvision's is around one mean luma for all three channels)."""
    offset = (1 - factor)[:, None] * channel_means(x)
    return scale_shift(x, factor, offset)


def tf_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`tf.image.adjust_saturation`: to HSV, s -> clamp(f s, 0, 1), back to RGB; without the round
    trip. With v = max and c = max - min of each pixel, HSV -> RGB gives each channel as
    v - c k_c(h), k_c in [0, 1] a function of the hue alone; h and v stay, so a new saturation
    s' = c' / v makes each channel v - (c' / c)(v - x_c). Unclipped c' = f c: v - f (v - x_c), a
    blend towards the max (torchvision's is towards the luma); where f s > 1 the saturation clips
    at 1 (c' = v): the factor is v / c instead, the smallest channel lands on 0 and the hue stays.
    So x_c' = v - min(max(f, 0), v / c) (v - x_c); simply clamping v - f (v - x_c) at 0 would
    move the hue of those pixels. Gray (c = 0) and black pixels come back unchanged.
    """
    low, value = torch.aminmax(x, dim=1, keepdim=True)
    limit = value / (value - low).clamp_min(1e-12)  # where c = 0, v - x_c is 0 too
    scale = torch.minimum(_per_sample(factor.clamp_min(0)), limit)
    return torch.addcmul(value, scale, value - x, value=-1).clamp_(0, 1)


def scale_shift(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """clamp(scale * x + offset, 0, 1): scale (n,), offset (n, 3); the affine map of the TF jitter's
    brightness (scale 1, offset delta) and contrast (scale f, offset (1 - f) m_c), a diagonal
    matrix, so one multiply-add per value (scale 1 and offset 0 give x back exactly)."""
    return torch.addcmul(offset[:, :, None, None], x, _per_sample(scale)).clamp_(0, 1)


def affine(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """clamp(matrix @ rgb + offset, 0, 1) at every pixel: x (n, 3, H, W) contiguous, matrix (n, 3, 3),
    offset (n, 3). Brightness, contrast and saturation are each such a map (see `jitter_affine`).

    Eagerly one batched matrix product (one pass over the pixels; an identity matrix gives x back
    exactly); under `torch.compile` the same sums written out, which fuse with their neighbours.
    """
    n, c, h, w = x.shape
    if torch.compiler.is_compiling():
        rgb = x.unbind(dim=1)
        rows = [sum(matrix[:, i, j].view(-1, 1, 1) * rgb[j] for j in range(3)) + offset[:, i].view(-1, 1, 1)
                for i in range(3)]
        return torch.stack(rows, dim=1).clamp_(0, 1)
    return torch.baddbmm(offset.unsqueeze(2), matrix, x.reshape(n, c, h * w)).view(n, c, h, w).clamp_(0, 1)


def jitter_affine(brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                  mean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (n, 3, 3) matrix and (n, 3) offset of `affine` that apply, per sample, the brightness
    factor, then the contrast factor (around `mean`, the mean luma; None: no contrast), then the
    saturation factor (each 1.0 where not applied; one of them per sample in practice).

    brightness f: f I. contrast f: f I and (1 - f) m. saturation f: f I + (1 - f) 1 w^T, w the
    luma weights, since luma(x) = w . x.
    """
    if torch.compiler.is_compiling():  # constants of the graph
        eye = torch.eye(3, device=brightness.device)
        weights = torch.tensor([GRAY_WEIGHTS], device=brightness.device)
    else:
        eye, weights = _eye_and_luma(brightness.device)
    scale = brightness * contrast
    matrix = (scale * saturation).view(-1, 1, 1) * eye + (scale * (1 - saturation)).view(-1, 1, 1) * weights
    offset = torch.zeros_like(brightness) if mean is None else (1 - contrast) * mean
    return matrix, offset.view(-1, 1).expand(-1, 3)


@functools.cache
def _eye_and_luma(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3x3 identity and the (1, 3) luma weights on `device`, made once (a host-to-device copy
    per call would synchronise)."""
    return torch.eye(3, device=device), torch.tensor([GRAY_WEIGHTS], device=device)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """1 - x where x >= threshold."""
    return torch.where(x >= _per_sample(threshold), 1 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int,
                  where: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's GaussianBlur with one sigma per sample, reflect padding; with `where` ((n,)
    bool), only in those samples (the others get the identity kernel: exactly unchanged).

    Kernel exp(-t^2 / 2 sigma^2) over t in [-(k-1)/2, (k-1)/2], normalized to sum 1, applied as
    two 1-D passes (equal to torchvision's 2-D outer-product kernel). Each pass is one grouped
    convolution over all the samples' channels (groups = 3n), with each sample's own kernel: no
    per-sample loop and no host sync (Kornia's `RandomGaussianBlur` syncs). Under `torch.compile`
    each pass is instead the weighted sum of k shifted slices, which the compiler fuses into one
    kernel (a convolution would be a separate kernel, with its padded input written out first).
    """
    n, c, h, w = x.shape
    offsets = torch.arange(kernel_size, dtype=torch.float32, device=x.device) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets / sigma[:, None]) ** 2 / 2)  # (n, k)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    if where is not None:  # 1 * x + 0 * neighbours is x exactly
        kernel = torch.where(where[:, None], kernel, (offsets == 0).to(kernel.dtype))
    pad = kernel_size // 2
    if torch.compiler.is_compiling():
        x = _taps(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kernel, dim=3)
        return _taps(F.pad(x, (0, 0, pad, pad), mode="reflect"), kernel, dim=2)
    weight = kernel[:, None].expand(n, c, kernel_size).reshape(n * c, 1, kernel_size)  # per channel
    x = x.reshape(1, n * c, h, w)  # the samples' channels as the groups of one image
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), weight[:, :, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), weight[:, :, :, None], groups=n * c)
    return x.view(n, c, h, w)


def _taps(padded: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """sum_j kernel[:, j] * padded shifted by j along `dim`: one 1-D pass of per-sample taps."""
    k = kernel.shape[1]
    out_len = padded.shape[dim] - k + 1
    out = None
    for j in range(k):
        term = padded.narrow(dim, j, out_len) * kernel[:, j].view(-1, 1, 1, 1)
        out = term if out is None else out + term
    return out
