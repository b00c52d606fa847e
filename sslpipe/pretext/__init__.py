"""Target-making for the pretext methods, on the device, vectorised over the batch: what a method
builds from the loader's views (tiles, patch grids) before its backbone sees them.

    patches, boxes = grid_patches(crops, grid=3, patch=64, generator=step.generator)  # jigsaw, rel. loc.
    patches, boxes = grid_patches(crops, patch=64, stride=32)                           # CPC's 7 x 7
"""

from sslpipe.pretext.grid import grid_patches
from sslpipe.pretext.patch_ops import drop_colors, normalized_patches

__all__ = ["drop_colors", "grid_patches", "normalized_patches"]
