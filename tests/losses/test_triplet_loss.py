"""The truncated triplet loss against a float64 loop with an explicit sort per row (the official
head's `topk(10, largest=False)[1:].mean()`), its rank-k forms, and its stop-gradient."""

import math

import pytest
import torch

from sslpipe.losses import triplet_loss


def _unit(row):
    norm = math.sqrt(sum(v * v for v in row))
    return [v / norm for v in row]


def _by_hand(p, t, first, last, gamma=2.0, margin=100.0):
    """Row by row: sort the row's negative distances ascending, average ranks first..last (1-based)."""
    p = [_unit(r) for r in p.double().tolist()]
    t = [_unit(r) for r in t.double().tolist()]
    n, losses, aps, ans = len(p), [], [], []
    for i in range(n):
        d = [-2.0 * sum(a * b for a, b in zip(p[i], t[j])) for j in range(n)]
        negatives = sorted(d[j] for j in range(n) if j != i)
        d_an = sum(negatives[first - 1:last]) / (last - first + 1)
        losses.append(max(0.0, gamma * d[i] - d_an + margin))
        aps.append(d[i])
        ans.append(d_an)
    return sum(losses) / n, aps, ans


def _inputs(n=12, d=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)


@pytest.mark.parametrize("ranks", [(2, 10), (1, 11), (3, 3), (1, 1), (4, 8)])
def test_triplet_loss_matches_a_sorted_loop(ranks):
    p, t = _inputs()
    loss, d_ap, d_an = triplet_loss(p, t, ranks)
    expected, aps, ans = _by_hand(p, t, *ranks)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(d_ap.double(), torch.tensor(aps, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_an.double(), torch.tensor(ans, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_the_official_defaults_drop_the_closest_negative():
    p, t = _inputs(n=16)
    loss, _, d_an = triplet_loss(p, t)  # ranks 2..10, gamma 2, margin 100
    assert loss.item() == pytest.approx(_by_hand(p, t, 2, 10)[0], rel=1e-6)
    # The official formulation per row: topk(10, largest=False)[1:].mean() of the off-diagonal row.
    pn, tn = torch.nn.functional.normalize(p, dim=1), torch.nn.functional.normalize(t, dim=1)
    dist = -2.0 * pn @ tn.t()
    for i in range(16):
        row = torch.cat([dist[i, :i], dist[i, i + 1:]])
        torch.testing.assert_close(d_an[i], torch.topk(row, 10, largest=False).values[1:].mean())


def test_small_margin_leaves_some_rows_inactive_and_gamma_weights_the_positive():
    p, t = _inputs(n=10, seed=3)
    for gamma, margin in [(1.0, 0.0), (2.0, 0.5), (0.5, 1.0)]:
        loss, _, _ = triplet_loss(p, t, (2, 5), gamma, margin)
        assert loss.item() == pytest.approx(_by_hand(p, t, 2, 5, gamma, margin)[0], rel=1e-6, abs=1e-7)


def test_gradient_reaches_the_predictions_not_the_targets():
    p, t = _inputs()
    p.requires_grad_(True)
    t.requires_grad_(True)
    triplet_loss(p, t)[0].backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert t.grad is None


def test_bf16_inputs_give_a_float32_loss():
    p, t = _inputs()
    loss, _, _ = triplet_loss(p.bfloat16(), t.bfloat16())
    assert loss.dtype == torch.float32


def test_ranks_beyond_the_batch_and_bad_shapes_are_refused():
    p, t = _inputs(n=8)
    with pytest.raises(ValueError, match="last <= N - 1 = 7"):
        triplet_loss(p, t, (2, 10))
    with pytest.raises(ValueError, match="1 <= first <= last"):
        triplet_loss(p, t, (3, 2))
    with pytest.raises(ValueError, match="one \\(N, D\\) shape"):
        triplet_loss(p, t[:, :3])
