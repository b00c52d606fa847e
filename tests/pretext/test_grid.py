"""The grid-tile primitive: patches are the image's pixels at their boxes, offsets stay inside
their cells and come from the generator, un-jittered tiles reassemble the crop, the strided mode
is torch's unfold, and bad geometry is refused with the numbers."""

import pytest
import torch
from einops import rearrange

from sslpipe.pretext import grid_patches

B, C = 3, 2


def _images(side, seed=0):
    return torch.randn(B, C, side, side, generator=torch.Generator().manual_seed(seed))


def test_every_patch_is_the_image_at_its_box_and_inside_its_cell():
    images = _images(85 * 3 // 5)   # 51 px: cells of 17, patches of 12, jitter 0..5
    patches, boxes = grid_patches(images, grid=3, patch=12, generator=torch.Generator().manual_seed(1))
    assert patches.shape == (B, 9, C, 12, 12) and boxes.shape == (B, 9, 2) and boxes.dtype == torch.int64
    for b in range(B):
        for p in range(9):
            top, left = boxes[b, p].tolist()
            row, col = divmod(p, 3)  # row-major over the grid
            assert 17 * row <= top <= 17 * row + 5 and 17 * col <= left <= 17 * col + 5
            assert torch.equal(patches[b, p], images[b, :, top:top + 12, left:left + 12])
    assert len({tuple(box) for box in (boxes % 17).view(-1, 2).tolist()}) > 1  # offsets differ


def test_offsets_come_from_the_generator():
    images = _images(30)
    draw = [grid_patches(images, grid=3, patch=6, generator=torch.Generator().manual_seed(s))[1]
            for s in (4, 4, 5)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


def test_tiles_without_jitter_that_fill_their_cells_reassemble_the_crop():
    images = _images(12)
    patches, boxes = grid_patches(images, grid=3, patch=4, jitter=False)
    rebuilt = rearrange(patches, "b (gh gw) c h w -> b c (gh h) (gw w)", gh=3)
    assert torch.equal(rebuilt, images)
    centred, boxes = grid_patches(_images(30), grid=3, patch=6, jitter=False)
    assert boxes[0, 4].tolist() == [10 + 2, 10 + 2]  # the centre cell's patch, centred in it


def test_the_strided_mode_is_unfold():
    images = _images(32)
    patches, boxes = grid_patches(images, patch=8, stride=4)   # CPC's 7 x 7 at a quarter of 256 px
    assert patches.shape == (B, 49, C, 8, 8)
    unfolded = torch.nn.functional.unfold(images, 8, stride=4).view(B, C, 8, 8, 49).permute(0, 4, 1, 2, 3)
    assert torch.equal(patches, unfolded)
    assert boxes[0, 8].tolist() == [4, 4] and boxes[0, -1].tolist() == [24, 24]


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch=4), "grid .* or stride"), (dict(patch=4, grid=3, stride=2), "not both"),
    (dict(patch=11, grid=3), "cells of 10 px, smaller than the patch of 11 px"),
    (dict(patch=40, stride=2), "between 1 and the image side 30"), (dict(patch=4, stride=0), "stride")])
def test_bad_geometry_is_refused_with_its_numbers(kwargs, message):
    with pytest.raises(ValueError, match=message):
        grid_patches(_images(30), **kwargs)


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square images, got 8 x 6"):
        grid_patches(torch.zeros(1, 3, 8, 6), grid=2, patch=2)
