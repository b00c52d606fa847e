"""The photometric stage: the table's ops, then Kornia transforms, then normalize, on the device.

Runs after the DALI crops on a group of views that share one output size, concatenated along the
batch (rows `[i*B:(i+1)*B]` belong to `views[i]`). Each op of the table (`sslpipe.pipeline.ops`)
draws its per-sample parameters from its own generator, seeded from the batch's seed and the op's
name, and applies them with no per-sample Python loop. One executor, two strategies:

- "select" (the GPU's): every op runs on the whole batch and leaves the samples that did not draw
  it unchanged (`PhotometricOp.select`: an identity kernel, an unreachable threshold, a
  `torch.where`); no host synchronisation, so the stage runs ahead on the CUDA stream. With
  `compile=True` (the loader's default on CUDA) this path goes through `torch.compile`, which
  fuses it into a few kernels (figures in docs/benchmarks.md, `tools/bench_device_counts.py`);
  if compiling fails, the stage warns once and runs it eagerly.
- "blocks" (the CPU's): nothing runs ahead there and memory traffic sets the pace, so the samples
  that share the ops' block keys (the jitter's order) go through the ops together in cache-sized
  blocks, each op only on the samples that drew it, on one torch thread.

`strategy="auto"` picks by device; forcing "select" on CPU tensors runs the device path on the CPU
(the tests do, to check both strategies give the same values).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from sslpipe import seeds
from sslpipe.pipeline.ops import OPS, Params, PhotometricOp, take
from sslpipe.pipeline.ops.kornia_transforms import KorniaStage
from sslpipe.pipeline.spec import ViewSpec

CPU_BLOCK_VALUES = 8 * 3 * 224 * 224  # per block on the CPU: 8 views at 224 px (4.8 MB), within L3
Strategy = Literal["auto", "select", "blocks"]


@dataclass
class Draws:
    """One batch's random parameters: per op of the stage (by key), and the Kornia transforms' seed."""

    ops: dict[str, Params]
    kornia_seed: int = 0


class PhotometricStage:
    """The photometric ops of views sharing one size.

    `stage(images, seed)`: uint8 (N, 3, H, W) with N = len(views) * batch_size, any strides,
    -> `dtype` (N, 3, H, W), contiguous or channels-last, on `device`. `compile`: run the
    select strategy through `torch.compile` (static shapes: one graph per stage).
    """

    def __init__(self, views: Sequence[ViewSpec], batch_size: int, device: torch.device | str,
                 normalize: bool = True, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 strategy: Strategy = "auto", compile: bool = False):
        views = tuple(views)
        if not views:
            raise ValueError("a photometric stage needs at least one view")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len({v.size for v in views}) > 1:
            raise ValueError(f"the views of a stage must share one size, got {[v.size for v in views]}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        if strategy not in ("auto", "select", "blocks"):
            raise ValueError(f"strategy must be auto, select or blocks, got {strategy!r}")
        if strategy == "blocks" and torch.device(device).type != "cpu":
            raise ValueError("strategy='blocks' is the CPU's (it gathers samples by host-side counts)")
        self.views, self.batch_size, self.device = views, batch_size, torch.device(device)
        self.size, self.n = views[0].size, len(views) * batch_size
        self.dtype, self.channels_last = dtype, channels_last
        self.blocks = strategy == "blocks" or (strategy == "auto" and self.device.type == "cpu")
        # Only the ops some view uses are built (and draw, and run).
        self.ops: list[PhotometricOp] = [op([v.op(key) for v in views], batch_size, self.size, self.device)
                                         for key, op in OPS.items() if any(v.op(key) for v in views)]
        self.kornia = KorniaStage(views, batch_size, self.size, self.device) if any(v.kornia for v in views) \
            else None
        norms = [v.normalize if normalize else None for v in views]
        self._normalize = any(norms)
        # Views without normalization get mean 0 and std 1: an exact identity, so no mask is needed.
        self._mean = self._per_view([n.mean if n else (0.0,) * 3 for n in norms])
        self._std = self._per_view([n.std if n else (1.0,) * 3 for n in norms])
        self._scale, self._shift = 1 / self._std, -self._mean / self._std  # x * scale + shift, one pass
        self.cpu_block = max(1, CPU_BLOCK_VALUES // (3 * self.size ** 2))  # samples per CPU block
        if compile and self.blocks:
            raise ValueError("compile=True compiles the select strategy; this stage runs blocks")
        self._compiled = torch.compile(self._device_ops, dynamic=False, fullgraph=True) if compile else None
        self._compiled_once = False

    def _per_view(self, values) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.float32).reshape(len(self.views), 1, 3, 1, 1)
        return t.expand(-1, self.batch_size, -1, -1, -1).reshape(self.n, 3, 1, 1).to(self.device)

    def sample(self, seed: int) -> Draws:
        """Every sample's parameters; op `key` draws from a generator seeded by (seed, key) alone."""
        ops = {}
        for op in self.ops:
            generator = torch.Generator(self.device).manual_seed(seeds.derive(seed, op.key))
            ops[op.key] = op.sample(generator)
        return Draws(ops, seeds.derive(seed, "kornia"))

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        return self.apply(images, self.sample(seed))

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """uint8 (N, 3, H, W), any strides -> `dtype` (N, 3, H, W): the augmented, normalized views."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[:2] != (self.n, 3):
            raise ValueError(f"expected uint8 images of shape ({self.n}, 3, H, W), "
                             f"got {images.dtype} {tuple(images.shape)}")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if not self.blocks:
            x = self._run_device_ops(images, draws.ops)
            if self.kornia is None:
                return x
            x = self.kornia(x, draws.kornia_seed)
            return self._normalized(x) if self._normalize else x.to(self.dtype, memory_format=memory_format)
        # On the CPU: the samples that share their block keys, a few at a time. Each op then runs on
        # a cache-sized block in one go, and only on the samples that drew it. With Kornia
        # transforms to follow, the blocks stay float32 and unnormalized until those have run.
        fused = self.kornia is None
        out = torch.empty(images.shape, dtype=self.dtype if fused else torch.float32,
                          memory_format=memory_format)
        with _one_thread():
            for keys, index in self._cpu_blocks(draws.ops):
                params = {key: take(p, index) for key, p in draws.ops.items()}
                x = self._gathered(_to_float(images[index]), params, keys)
                if fused and self._normalize:
                    x = (x - self._mean[index]) / self._std[index]
                out.index_copy_(0, index, x.to(out.dtype))
        if fused:
            return out
        return self._finish(out, draws).to(self.dtype, memory_format=memory_format)

    def _finish(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        """The Kornia transforms and the normalization, on the whole group."""
        if self.kornia is not None:
            x = self.kornia(x, draws.kornia_seed)
        if self._normalize:
            x = (x - self._mean) / self._std
        return x

    def _run_device_ops(self, images: torch.Tensor, params: dict[str, Params]) -> torch.Tensor:
        """`_device_ops`, compiled when asked; a failure of the first compiled call (the compiler
        missing, an unsupported op) warns and falls back to eager for good."""
        if self._compiled is not None:
            try:
                out = self._compiled(images, params)
                self._compiled_once = True
                return out
            except Exception as e:
                if self._compiled_once:
                    raise
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                warnings.warn(f"torch.compile failed on the photometric stage of views "
                              f"{sorted({v.name for v in self.views})} ({type(e).__name__}: {reason}); "
                              f"running it eagerly (the same values, more memory traffic)", stacklevel=3)
                self._compiled = None
        return self._device_ops(images, params)

    def _device_ops(self, images: torch.Tensor, params: dict[str, Params]) -> torch.Tensor:
        """The select strategy: uint8 -> float32, every op on the whole batch (gathering the drawn
        samples would need their count on the host, a sync), then, without Kornia transforms to
        follow, the normalization and the output cast in the same pass."""
        if torch.compiler.is_compiling():
            x = images.to(torch.float32) / 255
        else:  # in one pass, not a cast and then a division
            out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
            x = torch.div(images, 255, out=out)
        for op in self.ops:
            x = op.select(x, params[op.key])
        if self.kornia is not None:
            return x
        return self._normalized(x)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std as x * (1 / std) - mean / std, written straight into the output dtype
        and layout."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if torch.compiler.is_compiling():  # fused anyway; `out=` a channels-last tensor is unsupported
            x = torch.addcmul(self._shift, x, self._scale) if self._normalize else x
            return x.to(self.dtype, memory_format=memory_format)
        out = torch.empty(x.shape, dtype=self.dtype, device=x.device, memory_format=memory_format)
        if not self._normalize:
            return out.copy_(x)
        return torch.addcmul(self._shift, x, self._scale, out=out)

    def _gathered(self, x: torch.Tensor, params: dict[str, Params], keys: dict[str, int]) -> torch.Tensor:
        """Each op on the samples of the block that drew it only (a blur with p = 0.5 costs half)."""
        for op in self.ops:
            p = params[op.key]
            index = p["on"].nonzero().squeeze(1)
            if len(index) == len(x):
                x = op.apply(x, p, keys.get(op.key))
            elif len(index):
                x[index] = op.apply(x[index], take(p, index), keys.get(op.key))
        return x

    def _cpu_blocks(self, params: dict[str, Params]) -> Iterator[tuple[dict[str, int], torch.Tensor]]:
        """(keys, index) pairs that cover the batch: the samples `index` (at most `cpu_block`) share
        the block key `keys[op.key]` of every op that has one."""
        keyed = [op for op in self.ops if op.block_key is not None]
        if not keyed:
            for block in torch.arange(self.n).split(self.cpu_block):
                yield {}, block
            return
        codes = torch.stack([op.block_key(params[op.key]) for op in keyed], dim=1)
        rows, inverse = torch.unique(codes, dim=0, return_inverse=True)
        for i, row in enumerate(rows.tolist()):
            keys = {op.key: code for op, code in zip(keyed, row)}
            for block in (inverse == i).nonzero().squeeze(1).split(self.cpu_block):
                yield keys, block


def _to_float(images: torch.Tensor) -> torch.Tensor:
    # All the math in float32: hue in fp16/bf16 can NaN on black pixels. One copy casts and makes the
    # layout contiguous whatever the input strides, so the grouped convolution needs no further copy.
    return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the count. On blocks this small, torch's intra-op
    threads mostly wait on each other, and the DALI threads decoding the next batches meanwhile
    use the CPU time better."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
