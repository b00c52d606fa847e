"""sRGB -> CIE Lab (D65) with its constants held as buffers: Kornia's `rgb_to_lab`, formula for
formula, without the two constant tensors that function builds on the input's device at every
call (each a copy from pageable memory, a host synchronisation per call on CUDA). Tested equal to
Kornia's (`tests/models/test_lab.py`).

    to_lab = RgbToLab()          # a submodule: moves with its model
    lab = to_lab(rgb)            # (B, 3, H, W) in [0, 1] -> L in 0..100, a and b about -110..100
"""

from __future__ import annotations

import torch
from torch import nn

# Linear sRGB -> XYZ (D65) and the D65 white, as kornia.color.rgb_to_xyz and rgb_to_lab.
XYZ_FROM_LINEAR_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169),
                       (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.95047, 1.0, 1.08883)
EPSILON = 0.008856   # (6/29)^3, rounded as Kornia's


class RgbToLab(nn.Module):
    """(B, 3, H, W) sRGB in [0, 1] -> (B, 3, H, W) CIE Lab, in the input's floating dtype."""

    def __init__(self):
        super().__init__()
        white = torch.tensor(D65_WHITE).view(3, 1)
        # Constants moved with the module, not saved (a model's state dict stays the network's).
        self.register_buffer("matrix", torch.tensor(XYZ_FROM_LINEAR_RGB) / white, persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        linear = torch.where(rgb > 0.04045, torch.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
        xyz = torch.einsum("ij,bjhw->bihw", self.matrix.to(rgb.dtype), linear)   # relative to the white
        f = torch.where(xyz > EPSILON, torch.pow(xyz.clamp(min=EPSILON), 1 / 3), 7.787 * xyz + 4 / 29)
        fx, fy, fz = f.unbind(1)
        return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)
