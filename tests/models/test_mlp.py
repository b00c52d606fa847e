"""The MLP builder reproduces the projector and predictor heads of SimCLR, MoCo v2, SwAV and SimSiam."""

import pytest
import torch
from torch import nn

from sslpipe.models import mlp


def structure(head: nn.Sequential) -> list[tuple]:
    """Each layer as (type, in, out, has bias) for Linear, (type, features, affine) for BN, (type,)."""
    out = []
    for m in head:
        if isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("BN", m.num_features, m.affine))
        else:
            out.append((type(m).__name__,))
    return out


HEADS = {
    "simclr_projector": (
        mlp([2048, 2048, 128]),
        [("Linear", 2048, 2048, False), ("BN", 2048, True), ("ReLU",), ("Linear", 2048, 128, True)],
    ),
    "mocov2_head": (
        mlp([2048, 2048, 128], norm=False),
        [("Linear", 2048, 2048, True), ("ReLU",), ("Linear", 2048, 128, True)],
    ),
    "swav_projector": (
        mlp([2048, 2048, 128]),
        [("Linear", 2048, 2048, False), ("BN", 2048, True), ("ReLU",), ("Linear", 2048, 128, True)],
    ),
    "simsiam_projector": (
        mlp([2048, 2048, 2048, 2048], norm_last=True, last_affine=False),
        [("Linear", 2048, 2048, False), ("BN", 2048, True), ("ReLU",),
         ("Linear", 2048, 2048, False), ("BN", 2048, True), ("ReLU",),
         ("Linear", 2048, 2048, False), ("BN", 2048, False)],
    ),
    "simsiam_predictor": (
        mlp([2048, 512, 2048]),
        [("Linear", 2048, 512, False), ("BN", 512, True), ("ReLU",), ("Linear", 512, 2048, True)],
    ),
}


@pytest.mark.parametrize("name", HEADS)
def test_head_structure(name):
    head, expected = HEADS[name]
    assert isinstance(head, nn.Sequential)
    assert structure(head) == expected


@pytest.mark.parametrize("name", HEADS)
def test_head_output_shape(name):
    head, expected = HEADS[name]
    x = torch.randn(4, expected[0][1])
    assert head.train()(x).shape == (4, expected[-1][-2] if expected[-1][0] == "BN" else expected[-1][2])


def test_simsiam_projector_output_is_normalised_without_affine():
    head = mlp([16, 32, 8], norm_last=True, last_affine=False).train()
    y = head(torch.randn(64, 16))
    torch.testing.assert_close(y.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in head[-1].parameters()) == 0


def test_single_layer_is_a_linear():
    assert structure(mlp([8, 4])) == [("Linear", 8, 4, True)]
    assert structure(mlp([8, 4], norm_last=True)) == [("Linear", 8, 4, False), ("BN", 4, True)]


def test_no_relu_after_last_layer():
    head = mlp([4, 8, 8, 2], norm=True, norm_last=True)
    assert not isinstance(head[-1], nn.ReLU)
    assert sum(isinstance(m, nn.ReLU) for m in head) == 2


@pytest.mark.parametrize("dims", [[], [2048]])
def test_short_dims_raise(dims):
    with pytest.raises(ValueError, match="at least"):
        mlp(dims)
