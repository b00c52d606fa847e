"""Projector and predictor heads: one builder for the MLPs of SimCLR, MoCo v2, SwAV and SimSiam."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(dims: Sequence[int], *, norm: bool = True, norm_last: bool = False,
        last_affine: bool = True) -> nn.Sequential:
    """An MLP through `dims`: (B, dims[0]) -> (B, dims[-1]).

    Each hidden layer is Linear -> BatchNorm1d (when `norm`) -> ReLU; the last is a Linear, then a
    BatchNorm1d (affine=`last_affine`) when `norm_last`, and never a ReLU. A Linear has a bias
    exactly when no BatchNorm follows it (a bias before BN is cancelled by its mean).

    The heads of the methods:

    - SimCLR projector: `mlp([2048, 2048, 128])`
    - MoCo v2 head: `mlp([2048, 2048, 128], norm=False)`
    - SwAV projector: `mlp([2048, 2048, 128])`
    - SimSiam projector: `mlp([2048, 2048, 2048, 2048], norm_last=True, last_affine=False)`
    - SimSiam predictor: `mlp([2048, 512, 2048])`
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least an input and an output size, got dims={dims}")
    if min(dims) < 1:
        raise ValueError(f"every layer of an MLP needs a width >= 1, got {dims}")
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        bn = norm_last if last else norm
        layers.append(nn.Linear(cin, cout, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(cout, affine=last_affine if last else True))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
