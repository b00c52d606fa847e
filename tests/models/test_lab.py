"""The buffered Lab conversion equals Kornia's `rgb_to_lab`, and makes no host synchronisation
(Kornia's builds constants on the device at each call)."""

import torch
from kornia.color import rgb_to_lab

from sslpipe.counting import DispatchCounter
from sslpipe.models.lab import RgbToLab


def test_equals_kornia_over_srgb_colours_and_random_images():
    levels = torch.arange(0, 256, 5, dtype=torch.float32) / 255
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    colours = torch.stack([r.ravel(), g.ravel(), b.ravel()]).view(1, 3, 1, -1)
    images = torch.rand(4, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    to_lab = RgbToLab()
    for rgb in (colours, images, colours.double()):
        ours, kornia = to_lab(rgb), rgb_to_lab(rgb)
        assert ours.dtype == rgb.dtype
        assert torch.allclose(ours, kornia, atol=2e-4), (ours - kornia).abs().max()


def test_makes_no_host_sync():
    to_lab, rgb = RgbToLab(), torch.rand(2, 3, 8, 8)
    with DispatchCounter(roots=[rgb, to_lab]) as counted:
        to_lab(rgb)
    assert counted.sync_count == 0, dict(counted.syncs)
    with DispatchCounter(roots=[rgb]) as kornias:   # why this module exists
        rgb_to_lab(rgb)
    assert kornias.sync_count > 0
