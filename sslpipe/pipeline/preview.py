"""`sslpipe preview`: a picture of what a spec does to real images (rows = images, columns = views)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.spec import PipelineSpec

GAP = 4        # pixels between cells
HEADER = 18    # pixels for the view names above the columns


def render_preview(spec: str | Path | PipelineSpec, shards, out: str | Path, images: int = 8, seed: int = 0,
                   device: str = "cpu") -> Path:
    """Write a PNG grid of the first `images` images of an epoch under every view of `spec`.

    Views are shown before normalization, each at its own size (SwAV's 96-px views are smaller).
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise SslpipeError(f"{out}: the preview is a PNG; name it *.png")
    loader = ViewLoader(spec, shards, batch_size=images, device=device, seed=seed, normalize=False)
    batch = next(iter(loader))
    sizes = [view.size for view in loader.spec.views]
    lefts = [GAP + sum(sizes[:column]) + GAP * column for column in range(len(sizes))]
    row_height = max(sizes) + GAP
    grid = Image.new("RGB", (lefts[-1] + sizes[-1] + GAP, HEADER + images * row_height + GAP), "white")
    draw = ImageDraw.Draw(grid)
    for column, (spec_view, view) in enumerate(zip(loader.spec.views, batch.views)):
        draw.text((lefts[column], 3), f"{spec_view.name} {column + 1}", fill="black")
        pixels = (view.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for row in range(images):
            grid.paste(Image.fromarray(np.ascontiguousarray(pixels[row])),
                       (lefts[column], HEADER + GAP + row * row_height))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
    except OSError as e:
        raise SslpipeError(f"{out}: cannot write the preview: {e.strerror}") from None
    return out
