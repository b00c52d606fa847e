"""`batch_criterion` (InvaSpread) against an explicit float64 double loop over anchors and
columns, and against a transliteration of the official `BatchCriterion` (values and gradients:
the official multiplies by the detached features, so only the anchors' rows carry gradient)."""

import math

import pytest
import torch

from sslpipe.losses import batch_criterion


def _naive(f1, f2, temperature, neg_m=1.0):
    """-1/(2B) sum_i [log P_i,pos + negM sum_{j not in {i,pos}} log(1 - P_ij)], loops in float64."""
    rows = [v for v in torch.cat([f1, f2]).double().tolist()]
    rows = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in rows]
    n2 = len(rows)
    b = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + b) % n2
        p = {}
        for j in range(n2):
            if j != i:
                p[j] = math.exp(sum(x * y for x, y in zip(rows[i], rows[j])) / temperature)
        z = sum(p.values())
        if neg_m != 1:
            z = (z - p[pos]) * neg_m + p[pos]
        term = math.log(p[pos] / z)
        for j in range(n2):
            if j not in (i, pos):
                term += neg_m * math.log(1 - p[j] / z)
        total += term
    return -total / n2


def _official(x, T, negM=1.0):
    """BatchAverage.py's BatchCriterion.forward, with `.cuda()` removed (x: the (2B, D) features)."""
    batchSize = x.size(0)
    diag_mat = 1 - torch.eye(batchSize, dtype=x.dtype)
    reordered_x = torch.cat((x.narrow(0, batchSize // 2, batchSize // 2), x.narrow(0, 0, batchSize // 2)), 0)
    pos = (x * reordered_x.data).sum(1).div_(T).exp_()
    all_prob = torch.mm(x, x.t().data).div_(T).exp_() * diag_mat
    if negM == 1:
        all_div = all_prob.sum(1)
    else:
        all_div = (all_prob.sum(1) - pos) * negM + pos
    lnPmt = torch.div(pos, all_div)
    Pon_div = all_div.repeat(batchSize, 1)
    lnPon = torch.div(all_prob, Pon_div.t())
    lnPon = -lnPon.add(-1)
    lnPon.log_()
    lnPon = lnPon.sum(1) - (-lnPmt.add(-1)).log_()
    lnPmt.log_()
    lnPmtsum = lnPmt.sum(0)
    lnPonsum = lnPon.sum(0)
    lnPonsum = lnPonsum * negM
    return - (lnPmtsum + lnPonsum) / batchSize


def _features(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("temperature, neg_m", [(0.1, 1.0), (0.5, 1.0), (0.1, 1.5), (0.2, 2.0)])
def test_batch_criterion_equals_the_double_loop(temperature, neg_m):
    f1, f2 = _features()
    loss, candidates = batch_criterion(f1, f2, temperature, neg_m)
    assert loss.dtype == torch.float32 and loss.ndim == 0 and candidates == 10
    assert loss.item() == pytest.approx(_naive(f1, f2, temperature, neg_m), rel=1e-5)


@pytest.mark.parametrize("neg_m", [1.0, 2.0])
def test_batch_criterion_value_and_gradient_equal_the_official_code(neg_m):
    f1, f2 = _features(seed=3)
    h1, h2 = f1.double().requires_grad_(), f2.double().requires_grad_()
    loss, _ = batch_criterion(h1, h2, 0.1, neg_m)
    loss.backward()
    # The official network ends in an L2 normalization, before the criterion.
    x = torch.cat([f1, f2]).double().requires_grad_()
    expected = _official(torch.nn.functional.normalize(x, dim=1), 0.1, neg_m)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([h1.grad, h2.grad]), x.grad, rtol=1e-4, atol=1e-5)  # float32 inside


def test_batch_criterion_gradient_reaches_the_rows_only():
    # The full gradient (columns included) differs: the official's `.data` is kept.
    f1, f2 = _features(seed=4)
    h1, h2 = f1.double().requires_grad_(), f2.double().requires_grad_()
    batch_criterion(h1, h2, 0.1)[0].backward()
    x = torch.cat([f1, f2]).double().requires_grad_()
    z = torch.nn.functional.normalize(x, dim=1)
    n2 = z.shape[0]
    p = torch.exp(z @ z.t() / 0.1) * (1 - torch.eye(n2, dtype=z.dtype))
    div = p.sum(1, keepdim=True)
    partner = torch.cat([torch.arange(n2 // 2) + n2 // 2, torch.arange(n2 // 2)])
    mask = torch.ones_like(p).scatter_(1, partner[:, None], 0)
    full = -((p.gather(1, partner[:, None]) / div).log().sum() + (torch.log1p(-p / div) * mask).sum()) / n2
    full.backward()
    assert not torch.allclose(torch.cat([h1.grad, h2.grad]), x.grad, atol=1e-4)


def test_batch_criterion_float32_inside_and_finite_when_the_positive_dominates():
    f1, f2 = _features(seed=5)
    loss, _ = batch_criterion(f1.bfloat16(), f2.bfloat16(), 0.1)
    assert loss.dtype == torch.float32
    # Identical views, far apart images, T small: P_pos rounds to 1 in float32; the official's
    # log(1 - P_pos) subtraction would be inf - inf, the masked sum stays finite.
    base = torch.eye(4)
    h = base.clone().requires_grad_()
    loss, _ = batch_criterion(h, base, 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h.grad).all()


def test_batch_criterion_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="batch_criterion"):
        batch_criterion(torch.randn(4, 3), torch.randn(4, 2), 0.1)
