"""Backbones and heads: torchvision-compatible ResNets and the MLP builder for projectors.

`BACKBONES` is the registry behind a recipe's `model.backbone`: name -> constructor taking
`small_images` and `zero_init_residual`, returning a module (B, 3, H, W) -> (B, num_features)
with a `num_features` attribute.
"""

from functools import partial

from sslpipe.errors import SslpipeError
from sslpipe.models.cmc import CMCSplit, cmc_resnet18, cmc_resnet18_ycbcr, cmc_resnet50, cmc_resnet50_ycbcr
from sslpipe.models.global_batchnorm import GlobalBatchNorm1d, GlobalBatchNorm2d, convert_global_batchnorm
from sslpipe.models.lightness import LightnessResNet, colorization_resnet18, colorization_resnet50
from sslpipe.models.mlp import mlp
from sslpipe.models.resnet import ResNet, resnet18, resnet50

BACKBONES = {"resnet18": resnet18, "resnet50": resnet50}
# CMC's two encoders (L and ab, or Y and CbCr) on the RGB view, their features concatenated.
BACKBONES.update({"cmc_resnet18": cmc_resnet18, "cmc_resnet50": cmc_resnet50,
                  "cmc_resnet18_ycbcr": cmc_resnet18_ycbcr, "cmc_resnet50_ycbcr": cmc_resnet50_ycbcr})
# Layer norms in the BatchNorms' place: CPC v2's encoder (no statistics shared across the batch).
BACKBONES.update({"resnet18_layernorm": partial(resnet18, norm="layer"),
                  "resnet50_layernorm": partial(resnet50, norm="layer")})
# Colorization's encoder: the L channel of the RGB view, output stride 8 (dilated last stages).
BACKBONES.update({"colorization_resnet18": colorization_resnet18,
                  "colorization_resnet50": colorization_resnet50})


def build_backbone(name: str, *, small_images: bool = False, zero_init_residual: bool = False) -> ResNet:
    """The named backbone without a classifier: forward (B, 3, H, W) -> (B, num_features)."""
    if name not in BACKBONES:
        raise SslpipeError(f"unknown backbone {name!r}: choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](small_images=small_images, zero_init_residual=zero_init_residual)


__all__ = ["BACKBONES", "CMCSplit", "GlobalBatchNorm1d", "GlobalBatchNorm2d", "LightnessResNet",
           "build_backbone", "colorization_resnet18", "colorization_resnet50", "convert_global_batchnorm",
           "mlp", "resnet18", "resnet50"]
