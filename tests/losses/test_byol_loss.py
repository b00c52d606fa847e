"""BYOL's regression loss against a float64 loop over samples, and its stop-gradient."""

import math

import pytest
import torch

from sslpipe.losses import regression_loss


def _by_hand(p, z):
    """mean_i sum_d (p_id/|p_i| - z_id/|z_i|)^2 in float64, one sample and one coordinate at a time."""
    total = 0.0
    for pi, zi in zip(p.double().tolist(), z.double().tolist()):
        norm_p, norm_z = math.sqrt(sum(v * v for v in pi)), math.sqrt(sum(v * v for v in zi))
        total += sum((a / norm_p - b / norm_z) ** 2 for a, b in zip(pi, zi))
    return total / len(p)


def test_regression_loss_is_the_mean_squared_distance_of_the_unit_vectors():
    generator = torch.Generator().manual_seed(0)
    p, z = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    loss = regression_loss(p, z)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(_by_hand(p, z), rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(p.double(), z.double()).mean().item()
    assert loss.item() == pytest.approx(2 - 2 * cosine, rel=1e-5)  # = 2 - 2 cos


def test_regression_loss_bounds_and_scale_invariance():
    p = torch.randn(4, 3)
    assert regression_loss(p, 3.0 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert regression_loss(p, -p).item() == pytest.approx(4.0, rel=1e-6)


def test_regression_loss_in_bf16_is_computed_in_float32():
    p, z = torch.randn(4, 8), torch.randn(4, 8)
    loss = regression_loss(p.bfloat16(), z.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(regression_loss(p.bfloat16().float(), z.bfloat16().float()).item())


def test_gradient_reaches_the_prediction_not_the_target():
    p = torch.randn(6, 4, requires_grad=True)
    z = torch.randn(6, 4, requires_grad=True)
    regression_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one \\(N, D\\) shape"):
        regression_loss(torch.randn(4, 3), torch.randn(4, 2))
