"""The photometric stage: color jitter, grayscale, blur, solarize and normalize on the device.

Runs after the DALI crops on a group of views that share one output size, concatenated along the
batch (rows `[i*B:(i+1)*B]` belong to `views[i]`), with torchvision's semantics in torchvision's
order. Per-sample parameters are tensors and the per-view settings are static `(N,)` tensors
built once. On a GPU the whole batch goes through each op at once and `torch.where` keeps the
samples that drew it, with no per-sample loop and no host synchronisation, so the stage runs
ahead on the CUDA stream. On the CPU, where nothing runs ahead and memory traffic sets the pace,
the samples that share a jitter order go through the ops together in cache-sized blocks, each op
only on the samples that drew it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

from sslpipe.pipeline import color
from sslpipe.pipeline.spec import ViewSpec

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # the values in `PhotometricParams.order`
JITTER_OPS = (color.brightness, color.contrast, color.saturation, color.shift_hue)  # in that order
CPU_BLOCK_VALUES = 8 * 3 * 224 * 224  # per block on the CPU: 8 views at 224 px (4.8 MB), within L3


@dataclass
class PhotometricParams:
    """Per-sample parameters, every field a tensor of leading dim N on the stage's device.

    Factors are identities (1.0, hue 0.0) where `jitter` is False; `order[n]` is a permutation of
    (BRIGHTNESS, CONTRAST, SATURATION, HUE): the order sample n's jitter ops run in.
    """

    jitter: torch.Tensor  # (N,) bool
    brightness: torch.Tensor  # (N,) float32, U[max(0, 1-s), 1+s]
    contrast: torch.Tensor  # (N,) float32
    saturation: torch.Tensor  # (N,) float32
    hue: torch.Tensor  # (N,) float32, shift in turns, U[-h, h]
    order: torch.Tensor  # (N, 4) int64
    gray: torch.Tensor  # (N,) bool
    blur: torch.Tensor  # (N,) bool
    sigma: torch.Tensor  # (N,) float32, in the view's blur.sigma range
    solarize: torch.Tensor  # (N,) bool
    threshold: torch.Tensor  # (N,) float32

    def take(self, index: torch.Tensor) -> PhotometricParams:
        """The parameters of the samples `index`, in that order."""
        return PhotometricParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class PhotometricStage:
    """Color jitter, grayscale, blur, solarize and normalize for views sharing one size.

    `stage(images, generator)`: uint8 (N, 3, H, W) with N = len(views) * batch_size, any strides,
    -> `dtype` (N, 3, H, W), contiguous or channels-last. The generator must live on `device`.
    """

    def __init__(self, views: Sequence[ViewSpec], batch_size: int, device: torch.device | str,
                 normalize: bool = True, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        views = tuple(views)
        if not views:
            raise ValueError("a photometric stage needs at least one view")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len({v.size for v in views}) > 1:
            raise ValueError(f"the views of a stage must share one size, got {[v.size for v in views]}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.views, self.batch_size, self.device = views, batch_size, torch.device(device)
        self.n = len(views) * batch_size
        self.dtype, self.channels_last = dtype, channels_last
        self.blocks = self.device.type == "cpu"  # the CPU strategy (see the module's docstring)

        cj = [v.color_jitter for v in views]
        blurs = [v.blur if v.blur is not None and v.blur.p > 0 else None for v in views]
        sols = [v.solarize if v.solarize is not None and v.solarize.p > 0 else None for v in views]
        norms = [v.normalize if normalize else None for v in views]

        def per_sample(values, shape=()):  # one value per view -> (N, *shape) float32 on the device
            t = torch.tensor(values, dtype=torch.float32).reshape(len(views), 1, *shape)
            return t.expand(-1, batch_size, *shape).reshape(self.n, *shape).to(self.device)

        def strength_range(name):  # torchvision's factor range for strength s: [max(0, 1 - s), 1 + s]
            s = [getattr(c, name) if c else 0.0 for c in cj]
            return per_sample([max(0.0, 1 - x) for x in s]), per_sample([1 + x for x in s])

        # Static (Python-level) switches: an op no view uses is never computed.
        self._jitter = any(c is not None and c.p > 0 for c in cj)
        self._ops = [self._jitter and any(c and getattr(c, name) > 0 for c in cj)
                     for name in ("brightness", "contrast", "saturation", "hue")]
        self._gray = any(v.grayscale > 0 for v in views)
        self._blur = any(blurs)
        self._solarize = any(sols)
        self._normalize = any(norms)

        self._jitter_p = per_sample([c.p if c else 0.0 for c in cj])
        self._ranges = [strength_range(name) for name in ("brightness", "contrast", "saturation")]
        self._hue = per_sample([c.hue if c else 0.0 for c in cj])
        self._gray_p = per_sample([v.grayscale for v in views])
        self._blur_p = per_sample([b.p if b else 0.0 for b in blurs])
        self._sigma = (per_sample([b.sigma[0] if b else 1.0 for b in blurs]),
                       per_sample([b.sigma[1] if b else 1.0 for b in blurs]))
        self._solarize_p = per_sample([s.p if s else 0.0 for s in sols])
        self._threshold = per_sample([s.threshold if s else 1.0 for s in sols])
        # Views without normalization get mean 0 and std 1: an exact identity, so no mask is needed.
        self._mean = per_sample([n.mean if n else (0.0,) * 3 for n in norms], (3, 1, 1))
        self._std = per_sample([n.std if n else (1.0,) * 3 for n in norms], (3, 1, 1))

        kernels = {v.blur_kernel for v, b in zip(views, blurs) if b}
        if len(kernels) > 1:
            raise ValueError(f"the views of a stage that blur must share one kernel size, "
                             f"got {sorted(kernels)}")
        self.kernel_size = kernels.pop() if kernels else 0
        self.cpu_block = max(1, CPU_BLOCK_VALUES // (3 * views[0].size ** 2))  # samples per CPU block

    def sample(self, generator: torch.Generator) -> PhotometricParams:
        """Draw every sample's parameters with `generator` (on the stage's device) alone."""
        # One fixed-shape draw whatever the spec, so a seed gives the same parameters for every op set.
        u = torch.rand(self.n, 9, generator=generator, device=self.device)
        order = torch.rand(self.n, 4, generator=generator, device=self.device).argsort(dim=1)
        jitter = u[:, 0] < self._jitter_p
        factors = [torch.where(jitter, lo + (hi - lo) * u[:, 1 + i], 1.0)
                   for i, (lo, hi) in enumerate(self._ranges)]
        lo, hi = self._sigma
        return PhotometricParams(
            jitter=jitter, brightness=factors[0], contrast=factors[1], saturation=factors[2],
            hue=torch.where(jitter, self._hue * (2 * u[:, 4] - 1), 0.0), order=order,
            gray=u[:, 5] < self._gray_p, blur=u[:, 6] < self._blur_p, sigma=lo + (hi - lo) * u[:, 7],
            solarize=u[:, 8] < self._solarize_p, threshold=self._threshold.clone())

    def apply(self, images: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
        """uint8 (N, 3, H, W), any strides -> `dtype` (N, 3, H, W): the augmented, normalized views."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[:2] != (self.n, 3):
            raise ValueError(f"expected uint8 images of shape ({self.n}, 3, H, W), "
                             f"got {images.dtype} {tuple(images.shape)}")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if not self.blocks:
            return self._augment(images, params, None).to(self.dtype, memory_format=memory_format)
        # On the CPU: the samples that share a jitter order, a few at a time. Each op then runs on
        # a cache-sized block in one go, and only on the samples that draw it; no device to keep ahead.
        out = torch.empty(images.shape, dtype=self.dtype, memory_format=memory_format)
        with _one_thread():
            for order, index in self._cpu_blocks(params):
                block = self._augment(images[index], params.take(index), order, index)
                out.index_copy_(0, index, block.to(self.dtype))
        return out

    def _augment(self, images: torch.Tensor, p: PhotometricParams, order: tuple[int, ...] | None,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (n, 3, H, W) -> float32 (n, 3, H, W), for the batch's samples `index` (None: all).

        `order`: the jitter ops every one of these samples runs, in that order (a CPU block); None:
        each sample's own `p.order` (the whole batch on a GPU).
        """
        # All the math in float32: hue in fp16/bf16 can NaN on black pixels. One copy casts and makes the
        # layout contiguous whatever the input strides, so the grouped convolution needs no further copy.
        x = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        factors = (p.brightness, p.contrast, p.saturation, p.hue)
        if order is not None:
            for i in order:
                if self._ops[i]:
                    x = JITTER_OPS[i](x, factors[i])
        elif self._jitter:
            # The random order, vectorized: at step k, each op changes the samples whose order[:, k] it is.
            for k in range(4):
                step = p.order[:, k]
                for i, (op, factor) in enumerate(zip(JITTER_OPS, factors)):
                    if self._ops[i]:
                        x = self._where(x, (step == i) & p.jitter, op, factor)
        if self._gray:
            x = self._where(x, p.gray, color.to_grayscale)
        if self._blur:
            x = self._where(x, p.blur, self._gaussian_blur, p.sigma)
        if self._solarize:
            x = self._where(x, p.solarize, color.solarize, p.threshold)
        if self._normalize:
            mean, std = (self._mean, self._std) if index is None else (self._mean[index], self._std[index])
            x = (x - mean) / std
        return x

    def _cpu_blocks(self, p: PhotometricParams):
        """(order, index) pairs that cover the batch: the samples `index` (at most `cpu_block`)
        share the jitter order `order` (() for the samples not jittered)."""
        codes = torch.where(p.jitter, (p.order * torch.tensor([64, 16, 4, 1])).sum(dim=1), -1)
        for code in codes.unique().tolist():
            index = (codes == code).nonzero().squeeze(1)
            order = () if code < 0 else tuple(code >> shift & 3 for shift in (6, 4, 2, 0))
            for block in index.split(self.cpu_block):
                yield order, block

    def _where(self, x: torch.Tensor, selected: torch.Tensor, op, *args: torch.Tensor) -> torch.Tensor:
        """`op(x, *args)` for the selected samples, `x` (bit-exact) for the others.

        On a GPU, `op` runs on the whole batch and `torch.where` selects: gathering the selected
        samples would need their count on the host, a sync. On the CPU there is no device to keep
        ahead, so `op` runs on the selected samples only (a blur with p = 0.5 costs half as much).
        """
        if not self.blocks:
            return torch.where(selected.view(-1, 1, 1, 1), op(x, *args), x)
        index = selected.nonzero().squeeze(1)
        if len(index) == len(x):
            return op(x, *args)
        if len(index):
            x[index] = op(x[index], *(a[index] for a in args))
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample(generator))

    def _gaussian_blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return color.gaussian_blur(x, sigma, self.kernel_size)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the count. On blocks this small, torch's intra-op
    threads mostly wait on each other: two took twice the CPU time of one for 6% less wall time
    (2-core EPYC), CPU time the DALI threads decoding the next batches meanwhile use better."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
