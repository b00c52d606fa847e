"""Each loss against a naive reference written differently: Python loops, explicit exp/log sums."""

import math

import pytest
import torch

from sslpipe.losses import info_nce, negative_cosine, nt_xent, sinkhorn, swapped_prediction


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _unit(x):
    return x / x.pow(2).sum(dim=-1, keepdim=True).sqrt()


def _cosine_scores(b, k, seed=0):
    """(b, k) cosines between features and prototypes, with many close to 1 (large exp(s/eps))."""
    prototypes = _unit(_randn(k, 32, seed=seed))
    owner = torch.arange(b) % k
    features = _unit(prototypes[owner] + 0.1 * _randn(b, 32, seed=seed + 1))
    return (features @ prototypes.t()).float()


# ---------------------------------------------------------------- NT-Xent


def naive_nt_xent(z1, z2, temperature, anchors=None):
    """Loop over anchors: -log(exp(s_ap / T) / sum_{j != a} exp(s_aj / T)), per direction a mean.

    `anchors` restricts the anchors to these rows (of z1 and of z2); all views stay candidates.
    """
    n = z1.shape[0]
    views = torch.cat([_unit(z1), _unit(z2)])
    rows = list(range(n)) if anchors is None else list(anchors)
    directions = []
    for offset in (0, n):  # z1 anchors, then z2 anchors
        terms = []
        for i in rows:
            a, p = offset + i, (offset + i + n) % (2 * n)
            denominator = sum(torch.exp(views[a].dot(views[j]) / temperature)
                              for j in range(2 * n) if j != a)
            terms.append(-torch.log(torch.exp(views[a].dot(views[p]) / temperature) / denominator))
        directions.append(sum(terms) / len(terms))
    return directions[0] + directions[1]


def test_nt_xent_matches_loops_and_sums_both_directions():
    z1, z2 = _randn(6, 5, seed=1), _randn(6, 5, seed=2)
    loss, candidates = nt_xent(z1, z2, 0.5)
    assert candidates == 12  # 2 * N * W with W = 1
    assert loss.dtype == torch.float32
    expected = naive_nt_xent(z1, z2, 0.5)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    # Symmetric in the two views: swapping them swaps the two directions of the sum.
    swapped, _ = nt_xent(z2, z1, 0.5)
    torch.testing.assert_close(swapped, loss)


def test_nt_xent_is_sum_of_two_means():
    """loss = CE(z1 anchors) + CE(z2 anchors): with identical views and orthogonal samples each
    direction is -log(e^{1/T} / (e^{1/T} + (2N-2) e^0)), so the sum is twice that."""
    n, t = 4, 0.5
    z = torch.eye(n, 8)
    loss, _ = nt_xent(z, z.clone(), t)
    one = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert loss.item() == pytest.approx(2 * one, rel=1e-5)


def test_nt_xent_gradients_reach_both_views_and_match_reference():
    a, b = _randn(5, 7, seed=3), _randn(5, 7, seed=4)
    z1, z2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss, _ = nt_xent(z1, z2, 0.2)
    loss.backward()
    r1, r2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    naive_nt_xent(r1, r2, 0.2).backward()
    for got, expected in ((z1.grad, r1.grad), (z2.grad, r2.grad)):
        assert got is not None and got.abs().sum() > 0 and torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_nt_xent_low_precision_input_computes_in_float32():
    z1, z2 = _randn(8, 16, seed=5), _randn(8, 16, seed=6)
    loss, _ = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected, _ = nt_xent(z1.bfloat16().float(), z2.bfloat16().float(), 0.1)
    torch.testing.assert_close(loss, expected)


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3), 0.1)


# ---------------------------------------------------------------- InfoNCE


def test_info_nce_matches_loops_and_stops_key_gradient():
    q0, k0 = _randn(5, 6, seed=7), _randn(5, 6, seed=8)
    queue = _unit(_randn(11, 6, seed=9)).float()
    q, k = q0.float().requires_grad_(), k0.float().requires_grad_()
    loss = info_nce(q, k, queue, 0.2)
    losses = []
    for i in range(5):
        qi, ki = _unit(q0[i]), _unit(k0[i])
        positive = torch.exp(qi.dot(ki) / 0.2)
        negatives = sum(torch.exp(qi.dot(queue[j].double()) / 0.2) for j in range(11))
        losses.append(-torch.log(positive / (positive + negatives)))
    torch.testing.assert_close(loss.double(), sum(losses) / 5, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None  # stop-gradient on the keys


def test_info_nce_fp16_input_is_float32():
    q, k = _randn(4, 8, seed=10), _randn(4, 8, seed=11)
    queue = _unit(_randn(16, 8, seed=12))
    loss = info_nce(q.half(), k.half(), queue.half(), 0.2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, info_nce(q.half().float(), k.half().float(), queue.half().float(), 0.2))


# ---------------------------------------------------------------- Sinkhorn


def loop_sinkhorn(scores, eps, iterations):
    """The official `distributed_sinkhorn` (one rank), element by element, in float64."""
    b, k = scores.shape
    q = [[math.exp(scores[i, j].item() / eps) for i in range(b)] for j in range(k)]  # K x B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            row_sum = sum(q[j])
            q[j] = [v / row_sum / k for v in q[j]]
        for i in range(b):
            column_sum = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / column_sum / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=torch.float64)


def test_sinkhorn_matches_official_loops():
    scores = _cosine_scores(12, 5, seed=13)
    codes = sinkhorn(scores, eps=0.05, iterations=3)
    assert codes.shape == (12, 5) and codes.dtype == torch.float32 and not codes.requires_grad
    torch.testing.assert_close(codes.double(), loop_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
    other = _randn(7, 9, seed=14).float()
    torch.testing.assert_close(sinkhorn(other, eps=0.5, iterations=4).double(), loop_sinkhorn(other, 0.5, 4),
                               rtol=1e-4, atol=1e-6)


def test_sinkhorn_marginals():
    b, k = 64, 16
    scores = _cosine_scores(b, k, seed=15)
    codes = sinkhorn(scores, eps=0.05, iterations=3)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(b), rtol=0, atol=1e-5)
    converged = sinkhorn(scores, eps=0.05, iterations=50)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(b), rtol=0, atol=1e-5)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((k,), b / k), rtol=0, atol=1e-3)


def test_sinkhorn_needs_no_gradient_input():
    scores = _cosine_scores(8, 4).requires_grad_()
    codes = sinkhorn(scores)
    assert not codes.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sinkhorn_low_precision_is_finite(dtype):
    scores = _cosine_scores(32, 8, seed=16)
    assert scores.max() > 0.9  # exp(0.9 / 0.05) = 6.6e7
    low = scores.to(dtype)
    if dtype == torch.float16:
        # What the official code would do with these inputs in fp16: exp overflows (bf16 has
        # float32's range, only its precision is poor).
        naive = torch.exp(low / 0.05)
        assert torch.isinf(naive).any()
        assert not torch.isfinite(naive / naive.sum()).all()

    codes = sinkhorn(low)
    assert codes.dtype == torch.float32 and torch.isfinite(codes).all()
    # Exactly the float32 result on the same (rounded) values ...
    torch.testing.assert_close(codes, sinkhorn(low.float()), rtol=1e-6, atol=1e-7)
    # ... and close to the full-precision one despite the input's rounding.
    torch.testing.assert_close(codes, sinkhorn(scores), rtol=0, atol=2e-3 if dtype == torch.float16 else 2e-2)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(32), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- swapped prediction


def test_swapped_prediction_matches_loops():
    b, k, t = 5, 7, 0.1
    crops = [_randn(b, k, seed=20 + c).float() for c in range(6)]  # 2 global + 4 local
    codes = [sinkhorn(crops[0]), sinkhorn(crops[1])]
    scores = [c.clone().requires_grad_() for c in crops]
    loss = swapped_prediction(scores, codes, t)

    total = 0.0
    for i in range(2):
        subloss = 0.0
        for v in range(6):
            if v == i:
                continue
            for row in range(b):
                log_z = math.log(sum(math.exp(crops[v][row, j].item() / t) for j in range(k)))
                subloss -= sum(codes[i][row, j].item() * (crops[v][row, j].item() / t - log_z)
                               for j in range(k)) / b
        total += subloss / 5
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)

    loss.backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in scores)


def test_swapped_prediction_codes_get_no_gradient():
    crops = [_randn(4, 3, seed=30 + c).float().requires_grad_() for c in range(2)]
    codes = [torch.softmax(c, dim=1) for c in crops]  # targets with a graph, to check the detach
    swapped_prediction(crops, codes).backward()
    # Each crop's gradient comes only from its own log_softmax: grad = (softmax(s/T) - code) / T / B.
    for v, i in ((0, 1), (1, 0)):
        expected = (torch.softmax(crops[v] / 0.1, dim=1) - codes[i]) / 0.1 / 4 / 2
        torch.testing.assert_close(crops[v].grad, expected.detach())


def test_swapped_prediction_validates_counts():
    with pytest.raises(ValueError):
        swapped_prediction([torch.randn(2, 3)], [torch.rand(2, 3)])
    with pytest.raises(ValueError):
        swapped_prediction([torch.randn(2, 3)] * 2, [])


# ---------------------------------------------------------------- negative cosine


def test_negative_cosine_value_and_stop_gradient():
    p0, z0 = _randn(6, 4, seed=40), _randn(6, 4, seed=41)
    p, z = p0.clone().requires_grad_(), z0.clone().requires_grad_()
    loss = negative_cosine(p, z)
    expected = -sum(p0[i].dot(z0[i]) / (p0[i].norm() * z0[i].norm()) for i in range(6)) / 6
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None
    assert negative_cosine(z0, z0).item() == pytest.approx(-1.0)
