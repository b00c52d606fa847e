"""Colorization's encoder (Zhang, Isola, Efros 2016, https://arxiv.org/abs/1603.08511): a ResNet
that sees only the lightness of an image, L - 50 of CIE Lab (the reference's input, range -50..50),
with its last stages dilated (output stride 8, as the reference's VGG keeps 1/8 resolution from
conv4 on) so that a colour can be predicted for every 4 x 4 pixels.

It takes the pipeline's RGB view, normalized with the ImageNet mean and std, and converts it
itself (`RgbToLab`, Kornia's formulas), so `sslpipe eval` and `export` use it like any backbone: its
representation is the pooled last feature map of the L channel.

    backbone = colorization_resnet50()
    lab = backbone.lab(rgb)                          # (B, 3, H, W) float32 L, a, b
    maps = backbone.encode_lightness(lab[:, :1])     # (B, 2048, H/8, W/8)
    features = backbone(rgb)                         # (B, 2048)
"""

from __future__ import annotations

import contextlib

import torch

from sslpipe.models.cmc import IMAGENET_MEAN, IMAGENET_STD
from sslpipe.models.lab import RgbToLab
from sslpipe.models.resnet import BasicBlock, Bottleneck, ResNet

L_CENTRE = 50.0   # the reference's `BGR2LabLayer` input: L - 50


class LightnessResNet(ResNet):
    """A one-channel ResNet on L - 50 of the RGB view: feature_map (B, 3, H, W) normalized RGB ->
    (B, num_features, H / output_stride, W / output_stride); forward pools it to (B, num_features)."""

    KEYS = "torchvision, conv1 on one channel (L)"

    def __init__(self, block, depths, *, output_stride: int = 8, **options):
        super().__init__(block, depths, in_channels=1, output_stride=output_stride, **options)
        # Constants, moved with the module but not saved: the state dict holds the ResNet only.
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.to_lab = RgbToLab()

    def lab(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized RGB -> (B, 3, H, W) float32 CIE Lab (L 0..100, a and b about -110..100)."""
        # In float32 (autocast off; the memory estimate runs this on the meta device, which has none).
        with torch.autocast(device_type=x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") \
                else contextlib.nullcontext():
            return self.to_lab((x.float() * self.rgb_std + self.rgb_mean).clamp(0, 1))

    def encode_lightness(self, lightness: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) L in 0..100 -> the (B, num_features, H/8, W/8) feature map."""
        return super().feature_map(lightness - L_CENTRE)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        lightness = self.lab(x)[:, :1]
        if x.is_contiguous(memory_format=torch.channels_last):  # the loader's layout on a GPU
            lightness = lightness.contiguous(memory_format=torch.channels_last)
        return self.encode_lightness(lightness)


def colorization_resnet18(*, small_images: bool = False, zero_init_residual: bool = False) -> LightnessResNet:
    """ResNet-18 on L, output stride 8: num_features 512."""
    return LightnessResNet(BasicBlock, (2, 2, 2, 2), small_images=small_images,
                           zero_init_residual=zero_init_residual)


def colorization_resnet50(*, small_images: bool = False, zero_init_residual: bool = False) -> LightnessResNet:
    """ResNet-50 on L, output stride 8: num_features 2048."""
    return LightnessResNet(Bottleneck, (3, 4, 6, 3), small_images=small_images,
                           zero_init_residual=zero_init_residual)
