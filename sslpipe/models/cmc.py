"""CMC's split network (Tian, Krishnan, Isola 2020, https://arxiv.org/abs/1906.05849): one ResNet on
the L (or Y) channel of an image, one on its ab (or CbCr) channels, as HobbitLong/CMC's
`models/resnet.py` (`ResNetV1`: "2xResNet50half", each ResNet at width 0.5).

It takes the pipeline's RGB view, normalized with the ImageNet mean and std (every spec's default,
the eval spec's too), and does the colour conversion itself, so the backbone of a CMC run is this
one module: `sslpipe eval` and `sslpipe export` build it from `model.backbone` like any other, and
its representation is the two encoders' pooled features concatenated (CMC's `LinearProbing.py`
at `--layer 6`). State-dict keys: `l.<torchvision ResNet keys>` and `ab.<...>`.

    backbone = cmc_resnet50()                   # Lab; cmc_resnet50_ycbcr for YCbCr
    h_l, h_ab = backbone.encode(rgb)            # (B, 1024) each, what the method's heads take
    features = backbone(rgb)                    # (B, 2048) = cat(h_l, h_ab)
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import nn

from sslpipe.models.lab import RgbToLab
from sslpipe.models.resnet import ResNet, resnet18, resnet50

# The pipeline's default normalization (`sslpipe.pipeline.spec.IMAGENET_MEAN/STD`, a higher layer;
# a test checks that they agree), undone to get RGB in [0, 1] back.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# HobbitLong/CMC train_CMC.py `get_train_loader`: skimage's Lab / YCbCr values, normalized per channel.
LAB_MEAN = ((0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)
YCBCR_MEAN = (116.151, 121.080, 132.342)
YCBCR_STD = (109.500, 111.855, 111.964)
# skimage's `rgb2ycbcr` (ITU-R BT.601, studio swing: Y in [16, 235], Cb and Cr in [16, 240]) on RGB in
# [0, 1]; Kornia's `rgb_to_ycbcr` is the full-range JPEG variant on [0, 1], another scale.
YCBCR_FROM_RGB = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
YCBCR_OFFSET = (16.0, 128.0, 128.0)

Colorspace = Literal["lab", "ycbcr"]


def _column(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class CMCSplit(nn.Module):
    """Two ResNets, `l` on channel 0 and `ab` on channels 1-2 of the image in `colorspace`.

    forward: (B, 3, H, W) normalized RGB -> (B, num_features), the two encoders' features concatenated.
    """

    KEYS = "torchvision, under l. and ab."  # as ResNet.KEYS

    def __init__(self, make_resnet, *, colorspace: Colorspace = "lab", width: float = 0.5,
                 small_images: bool = False, zero_init_residual: bool = False):
        super().__init__()
        if colorspace not in ("lab", "ycbcr"):
            raise ValueError(f"colorspace must be lab or ycbcr, got {colorspace!r}")
        self.colorspace = colorspace
        options = dict(width=width, small_images=small_images, zero_init_residual=zero_init_residual)
        self.l: ResNet = make_resnet(in_channels=1, **options)
        self.ab: ResNet = make_resnet(in_channels=2, **options)
        self.num_features = self.l.num_features + self.ab.num_features
        mean, std = (LAB_MEAN, LAB_STD) if colorspace == "lab" else (YCBCR_MEAN, YCBCR_STD)
        # Constants, moved with the module but not saved: the state dict holds the two ResNets only.
        for name, values in (("rgb_mean", IMAGENET_MEAN), ("rgb_std", IMAGENET_STD), ("color_mean", mean),
                             ("color_std", std)):
            self.register_buffer(name, _column(values), persistent=False)
        self.register_buffer("ycbcr_matrix", torch.tensor(YCBCR_FROM_RGB), persistent=False)
        self.register_buffer("ycbcr_offset", _column(YCBCR_OFFSET), persistent=False)
        self.to_lab = RgbToLab()

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalized RGB -> the normalized (B, 1, H, W) L and (B, 2, H, W) ab, float32."""
        # In float32 (autocast off; the memory estimate runs this on the meta device, which has none).
        with torch.autocast(device_type=x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") \
                else contextlib.nullcontext():
            rgb = (x.float() * self.rgb_std.float() + self.rgb_mean.float()).clamp(0, 1)
            if self.colorspace == "lab":
                color = self.to_lab(rgb)
            else:
                matrix, offset = self.ycbcr_matrix.float(), self.ycbcr_offset.float()
                color = torch.einsum("ij,bjhw->bihw", matrix, rgb) + offset
            color = (color - self.color_mean.float()) / self.color_std.float()
        return color[:, :1], color[:, 1:]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalized RGB -> (B, l.num_features), (B, ab.num_features)."""
        luma, chroma = self.split(x)
        # The channel slices in the input's layout (channels_last from the loader on a GPU).
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        return self.l(luma.contiguous(memory_format=layout)), self.ab(chroma.contiguous(memory_format=layout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.encode(x), dim=1)


def cmc_resnet18(*, small_images: bool = False, zero_init_residual: bool = False,
                 colorspace: Colorspace = "lab") -> CMCSplit:
    """Two half-width ResNet-18s on L and ab (CMC's `resnet18v1`): num_features 256 + 256."""
    return CMCSplit(resnet18, colorspace=colorspace, small_images=small_images,
                    zero_init_residual=zero_init_residual)


def cmc_resnet50(*, small_images: bool = False, zero_init_residual: bool = False,
                 colorspace: Colorspace = "lab") -> CMCSplit:
    """Two half-width ResNet-50s on L and ab (CMC's `resnet50v1`, "2xResNet50half"): 1024 + 1024."""
    return CMCSplit(resnet50, colorspace=colorspace, small_images=small_images,
                    zero_init_residual=zero_init_residual)


def cmc_resnet18_ycbcr(*, small_images: bool = False, zero_init_residual: bool = False) -> CMCSplit:
    """`cmc_resnet18` on Y and CbCr (CMC's `--view YCbCr`)."""
    return cmc_resnet18(small_images=small_images, zero_init_residual=zero_init_residual, colorspace="ycbcr")


def cmc_resnet50_ycbcr(*, small_images: bool = False, zero_init_residual: bool = False) -> CMCSplit:
    """`cmc_resnet50` on Y and CbCr (CMC's `--view YCbCr`, 0.5-1% better in its README)."""
    return cmc_resnet50(small_images=small_images, zero_init_residual=zero_init_residual, colorspace="ycbcr")
