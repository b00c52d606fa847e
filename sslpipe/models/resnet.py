"""ResNet-18 and ResNet-50 backbones (He et al., https://arxiv.org/abs/1512.03385), in plain torch.nn.

Version 1.5 as torchvision: the Bottleneck strides in its 3x3 conv. State-dict keys, shapes and
initialisation are identical to torchvision's `resnet18()` / `resnet50()`, so checkpoints load
either way. `small_images=True` swaps in the CIFAR-style stem (3x3 stride-1 conv1, no max-pool). `in_channels`
and `width` (the stages' channels x width, the stem's 64 kept) serve CMC's split encoders (one
ResNet on L, one on ab; "2xResNet50half" is width 0.5, as HobbitLong/CMC models/resnet.py).
`norm="layer"` puts a layer normalization (over each sample's C, H, W: `GroupNorm(1, C)`) in every
BatchNorm's place: CPC v2's encoder, whose patches must not share statistics through the batch;
its state dict has the same keys less the BatchNorms' running statistics.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "layer"]


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                     bias=False)


def _norm(norm: Norm, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(1, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus the shortcut: (B, cin, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: Norm = "batch", dilation: int = 1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride, dilation)
        self.bn1 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3, dilation=dilation)
        self.bn2 = _norm(norm, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus the shortcut:
    (B, cin, H, W) -> (B, 4 * planes, H/stride, W/stride)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: Norm = "batch", dilation: int = 1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv(planes, planes, 3, stride, dilation)
        self.bn2 = _norm(norm, planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = _norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, four stages, global average pool, then `fc` (a Linear, or Identity for features).

    forward: (B, 3, H, W) -> (B, num_classes), or (B, num_features) when `fc` is Identity.
    feature_map: (B, 3, H, W) -> (B, num_features, H / output_stride, W / output_stride), before the pool.
    `output_stride` 16 or 8 trades the last stages' strides for dilation (torchvision's
    `replace_stride_with_dilation`, same weights and keys): dense tasks such as colorization. The
    attribute `output_stride` is the map's stride in pixels (the CIFAR stem's is 4x smaller).
    """

    KEYS = "torchvision"  # its state dict's naming, written into exported files' metadata

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, int, int, int], *,
                 num_classes: int | None = None, small_images: bool = False,
                 zero_init_residual: bool = False, in_channels: int = 3, width: float = 1.0,
                 norm: Norm = "batch", output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if in_channels < 1 or not width > 0:
            raise ValueError(f"a ResNet needs in_channels >= 1 and width > 0, got {in_channels} and {width}")
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm must be batch or layer, got {norm!r}")
        if norm == "layer":
            self.KEYS = "torchvision, without the BatchNorms' running statistics (layer norms)"
        self._norm = norm
        self._inplanes, self._dilation = 64, 1
        self.output_stride = output_stride // 4 if small_images else output_stride
        if small_images:
            self.conv1 = _conv(in_channels, 64, 3)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_images else nn.MaxPool2d(3, stride=2, padding=1)
        base = int(64 * width)
        self.layer1 = self._stage(block, base, depths[0], 1)
        self.layer2 = self._stage(block, base * 2, depths[1], 2)
        self.layer3 = self._stage(block, base * 4, depths[2], 2, dilate=output_stride == 8)
        self.layer4 = self._stage(block, base * 8, depths[3], 2, dilate=output_stride < 32)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = base * 8 * block.expansion
        self.fc = nn.Identity() if num_classes is None else nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts at zero: https://arxiv.org/abs/1706.02677
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _stage(self, block: type[BasicBlock | Bottleneck], planes: int, depth: int, stride: int,
               dilate: bool = False):
        cout = planes * block.expansion
        previous = self._dilation
        if dilate:  # as torchvision: the first block keeps the previous dilation, the others dilate
            self._dilation, stride = self._dilation * stride, 1
        downsample = None
        if stride != 1 or self._inplanes != cout:
            downsample = nn.Sequential(_conv(self._inplanes, cout, 1, stride), _norm(self._norm, cout))
        blocks = [block(self._inplanes, planes, stride, downsample, self._norm, previous)]
        blocks += [block(cout, planes, norm=self._norm, dilation=self._dilation) for _ in range(1, depth)]
        self._inplanes = cout
        return nn.Sequential(*blocks)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.feature_map(x)), 1))


def resnet18(*, num_classes: int | None = None, small_images: bool = False,
             zero_init_residual: bool = False, in_channels: int = 3, width: float = 1.0,
             norm: Norm = "batch", output_stride: int = 32) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2), 11.7M parameters with a 1000-way fc; num_features 512 x width."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, small_images=small_images,
                  zero_init_residual=zero_init_residual, in_channels=in_channels, width=width, norm=norm,
                  output_stride=output_stride)


def resnet50(*, num_classes: int | None = None, small_images: bool = False,
             zero_init_residual: bool = False, in_channels: int = 3, width: float = 1.0,
             norm: Norm = "batch", output_stride: int = 32) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3), 25.6M parameters with a 1000-way fc; num_features 2048 x width."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, small_images=small_images,
                  zero_init_residual=zero_init_residual, in_channels=in_channels, width=width, norm=norm,
                  output_stride=output_stride)
