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
CELL = 128     # render_cells enlarges smaller images towards this side


def render_preview(spec: str | Path | PipelineSpec, shards, out: str | Path, images: int = 8, seed: int = 0,
                   device: str = "cpu") -> Path:
    """Write a PNG grid of the first `images` images of an epoch under every view of `spec`.

    Views are shown before normalization, each at its own size (SwAV's 96-px views are smaller).
    """
    out = Path(out)
    check_png(out)
    loader = ViewLoader(spec, shards, batch_size=images, device=device, seed=seed, normalize=False)
    batch = next(iter(loader))
    sizes = [view.size for view in loader.spec.views]
    lefts = [GAP + sum(sizes[:column]) + GAP * column for column in range(len(sizes))]
    row_height = max(sizes) + GAP
    grid = Image.new("RGB", (lefts[-1] + sizes[-1] + GAP, HEADER + images * row_height + GAP), "white")
    draw = ImageDraw.Draw(grid)
    for column, (spec_view, view) in enumerate(zip(loader.spec.views, batch.views)):
        draw.text((lefts[column], 3), f"{spec_view.name} {column + 1}", fill="black")
        for row in range(images):
            grid.paste(_picture(view[row]), (lefts[column], HEADER + GAP + row * row_height))
    return _save(grid, out)


def render_cells(rows: list[list[tuple[str, torch.Tensor]]], out: str | Path, title: str = "") -> Path:
    """Write a PNG of `rows` of (caption, (C, H, W) image in [0, 1]) cells, each caption above its
    image (a pretext method's inputs and targets: `sslpipe preview --method`). Small images are
    enlarged by a whole factor (nearest neighbour: every pixel stays visible as it is)."""
    out = Path(out)
    check_png(out)
    largest = max(max(image.shape[-2:]) for row in rows for _, image in row)
    factor = max(1, CELL // largest)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max(max(factor * image.shape[-1], round(measure.textlength(caption)))
                  for caption, image in column) for column in zip(*rows)]
    lefts = [GAP + sum(widths[:column]) + GAP * column for column in range(len(widths))]
    heights = [HEADER + factor * max(image.shape[-2] for _, image in row) + GAP for row in rows]
    top = HEADER if title else 0
    grid = Image.new("RGB", (lefts[-1] + widths[-1] + GAP, top + sum(heights) + GAP), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((GAP, 3), title, fill="black")
    for row, cells in enumerate(rows):
        y = top + sum(heights[:row])
        for column, (caption, image) in enumerate(cells):
            draw.text((lefts[column], y + 3), caption, fill="black")
            picture = _picture(image)
            picture = picture.resize((factor * picture.width, factor * picture.height), Image.NEAREST)
            grid.paste(picture, (lefts[column], y + HEADER))
    return _save(grid, out)


def check_png(out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise SslpipeError(f"{out}: the preview is a PNG; name it *.png")


def _picture(image: torch.Tensor) -> Image.Image:
    """(C, H, W) in [0, 1], C = 1 or 3 -> an RGB picture."""
    image = image.detach().float().clamp(0, 1).cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def _save(grid: Image.Image, out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
    except OSError as e:
        raise SslpipeError(f"{out}: cannot write the preview: {e.strerror}") from None
    return out
