"""Data for the pipeline tests: coordinate images and small versions of the shipped specs."""

import dataclasses

import numpy as np
from PIL import Image

from sslpipe.pipeline.spec import PipelineSpec, load_spec

WIDTH, HEIGHT = 160, 120
COORDINATE_IMAGES = 120


def coordinate_image(shift: int) -> Image.Image:
    """R = x, G = y (scaled to 0..255), B = a per-image value so every file differs."""
    x = np.linspace(0, 255, WIDTH)[None, :].repeat(HEIGHT, 0)
    y = np.linspace(0, 255, HEIGHT)[:, None].repeat(WIDTH, 1)
    b = np.full((HEIGHT, WIDTH), 40 + shift)
    return Image.fromarray(np.stack([x, y, b], -1).round().astype(np.uint8))


def resized(spec: str | PipelineSpec, size: int, **changes) -> PipelineSpec:
    """A spec with every view at `size` px (fast on the CPU), other fields replaced by `changes`."""
    spec = load_spec(spec)
    groups = tuple(dataclasses.replace(g, size=size, resize=None, **changes) for g in spec.groups)
    return dataclasses.replace(spec, groups=groups)
