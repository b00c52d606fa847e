"""The memory-bank losses (InstDisc, CMC) against float64 loops written from the papers' formulas,
and NCE's normalizing constant: estimated on the first batch, then fixed, and restored from a state
dict."""

import math

import pytest
import torch

from sslpipe.losses import bank_scores, bank_softmax, nce_loss, nce_normalizer
from sslpipe.methods.instdisc import NormalizingConstant

EPS = 1e-7


def _scores(b=4, k=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(b, k + 1, generator=generator) * 2 - 1  # cosine similarities


def test_bank_scores_are_the_dot_products_with_each_sample_s_rows():
    generator = torch.Generator().manual_seed(1)
    features, rows = torch.randn(3, 5, generator=generator), torch.randn(3, 4, 5, generator=generator)
    scores = bank_scores(features, rows)
    assert scores.shape == (3, 4) and scores.dtype == torch.float32
    for i in range(3):
        for j in range(4):
            expected = sum(float(features[i, d]) * float(rows[i, j, d]) for d in range(5))
            assert scores[i, j].item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match=r"features \(B, D\) and rows \(B, K\+1, D\)"):
        bank_scores(features, rows[:, :, :4])


@pytest.mark.parametrize("temperature, samples", [(0.07, 100), (0.5, 9)])
def test_nce_loss_is_the_nce_criterion_of_the_reference(temperature, samples):
    scores = _scores()
    z = torch.tensor(37.5)
    loss = nce_loss(scores, temperature, z, samples)
    b, k = scores.shape[0], scores.shape[1] - 1
    noise = k / samples  # K * P_n with P_n = 1/N
    total = 0.0
    for i in range(b):
        p = [math.exp(float(s) / temperature) / 37.5 for s in scores[i].double()]
        total += math.log(p[0] / (p[0] + noise + EPS))
        total += sum(math.log(noise / (q + noise + EPS)) for q in p[1:])
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(-total / b, rel=1e-5)


def test_nce_loss_takes_no_gradient_through_z_and_refuses_a_single_column():
    scores = _scores().requires_grad_()
    z = torch.tensor(10.0, requires_grad=True)
    nce_loss(scores, 0.07, z, 50).backward()
    assert scores.grad is not None and z.grad is None
    with pytest.raises(ValueError, match="K >= 1"):
        nce_loss(scores[:, :1], 0.07, z, 50)


def test_the_normalizer_is_the_mean_of_exp_s_over_t_times_n():
    scores = _scores(b=3, k=4)
    expected = sum(math.exp(float(s) / 0.07) for s in scores.double().flatten()) / scores.numel() * 1000
    assert nce_normalizer(scores, 0.07, 1000).item() == pytest.approx(expected, rel=1e-5)


def test_softmax_over_the_sampled_rows_picks_column_zero():
    scores = _scores(b=5, k=7, seed=3)
    loss = bank_softmax(scores, 0.07)
    expected = 0.0
    for row in scores.double():
        logits = [float(s) / 0.07 for s in row]
        top = max(logits)
        expected += -(logits[0] - top - math.log(sum(math.exp(x - top) for x in logits)))
    assert loss.item() == pytest.approx(expected / 5, rel=1e-5)


def test_full_softmax_over_the_bank_targets_each_sample_s_own_row():
    scores = _scores(b=3, k=9, seed=4)  # (B, N): every bank row
    target = torch.tensor([2, 0, 7])
    loss = bank_softmax(scores, 0.1, target=target)
    expected = 0.0
    for row, t in zip(scores.double(), target.tolist()):
        denominator = sum(math.exp(float(s) / 0.1) for s in row)
        expected += -math.log(math.exp(float(row[t]) / 0.1) / denominator)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)


def test_losses_are_float32_under_autocast():
    scores = _scores().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nce_loss(scores, 0.07, torch.tensor(5.0), 20).dtype == torch.float32
        assert bank_softmax(scores, 0.07).dtype == torch.float32
        features, rows = torch.randn(2, 3).bfloat16(), torch.randn(2, 4, 3).bfloat16()
        assert bank_scores(features, rows).dtype == torch.float32


def test_z_is_estimated_on_the_first_batch_then_fixed_and_restored():
    z = NormalizingConstant()
    assert z.value.item() == -1.0  # unset
    first, second = _scores(seed=5), _scores(seed=6) * 0.5
    value = z.resolve(first, 0.07, 200)
    assert value.item() == pytest.approx(nce_normalizer(first, 0.07, 200).item())
    assert z.resolve(second, 0.07, 200).item() == value.item()  # not estimated again
    restored = NormalizingConstant()
    restored.load_state_dict(z.state_dict())
    assert restored.resolve(second, 0.07, 200).item() == value.item()
    fresh = NormalizingConstant()
    fresh.load_state_dict(NormalizingConstant().state_dict())  # a checkpoint from before the first step
    assert fresh.resolve(second, 0.07, 200).item() == pytest.approx(nce_normalizer(second, 0.07, 200).item())
