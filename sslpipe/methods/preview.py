"""`sslpipe preview SPEC SHARDS --method NAME`: what a pretext method makes of the loader's views
(rotated copies and their labels, shuffled tiles and the permutation index, ...), drawn as a PNG."""

from __future__ import annotations

from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.methods import METHODS
from sslpipe.methods.base import Method, Step
from sslpipe.models import build_backbone
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.preview import check_png, render_cells


def render_method_preview(method: str, spec, shards, out: str | Path, images: int = 8, seed: int = 0,
                          device: str = "cpu") -> Path:
    """Write a PNG of what `method` (its default settings) makes of the first `images` images of an
    epoch under `spec`: one row per image, the method's cells (`Method.preview`) as columns."""
    if method not in METHODS:
        raise SslpipeError(f"--method {method!r}: unknown; choose one of {', '.join(METHODS)}")
    out = Path(out)
    check_png(out)
    loader = ViewLoader(spec, shards, batch_size=images, device=device, seed=seed, normalize=False)
    cls = METHODS[method]
    if cls.preview is Method.preview:  # before building it: an instance method may need more (a bank's size)
        raise SslpipeError(f"--method {method}: it trains on the spec's views as they come; "
                           f"`sslpipe preview {loader.spec.name} SHARDS` draws them")
    model = cls(build_backbone(cls.example_backbone), cls.Config(), global_batch=images,
                samples=loader.num_samples)
    model.views_needed().check(loader.spec, method, setting="SPEC")
    rows = model.to(device).preview(next(iter(loader)), Step(seed=seed, device=loader.device))
    return render_cells(rows, out, title=f"{method} on {loader.spec.name} (seed {seed})")
