"""Backbones and heads: torchvision-compatible ResNets and the MLP builder for projectors."""

from sslpipe.models.mlp import mlp
from sslpipe.models.resnet import build_backbone, resnet18, resnet50

__all__ = ["build_backbone", "mlp", "resnet18", "resnet50"]
