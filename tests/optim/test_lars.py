"""LARS against hand-computed updates and torch's SGD."""

import copy
import math

import pytest
import torch
from torch import nn

from sslpipe.optim.lars import LARS


def _param(values):
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_one_step_matches_hand_computation():
    w = _param([3.0, 4.0])                      # ||w|| = 5
    w.grad = torch.tensor([0.3, -0.4], dtype=torch.float64)
    opt = LARS([w], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    opt.step()
    # g = grad + 0.1 w = [0.6, 0.0], ||g|| = 0.6, trust = 0.01 * 5 / 0.6, trust * g = [0.05, 0]
    # first step: v = trust * g; w <- w - 0.5 v = [2.975, 4.0]
    torch.testing.assert_close(w.detach(), torch.tensor([2.975, 4.0], dtype=torch.float64))
    buf = opt.state[w]["momentum_buffer"]
    torch.testing.assert_close(buf, torch.tensor([0.05, 0.0], dtype=torch.float64))


def test_one_step_on_a_matrix_uses_the_frobenius_norm():
    torch.manual_seed(0)
    w0 = torch.randn(3, 4, dtype=torch.float64)
    grad = torch.randn(3, 4, dtype=torch.float64)
    lr, wd, eta = 0.2, 1e-2, 1e-3
    w = nn.Parameter(w0.clone())
    w.grad = grad.clone()
    LARS([w], lr=lr, weight_decay=wd, eta=eta).step()
    g = grad + wd * w0
    trust = eta * math.sqrt((w0 ** 2).sum().item()) / math.sqrt((g ** 2).sum().item())
    torch.testing.assert_close(w.detach(), w0 - lr * trust * g)


def test_momentum_across_two_steps_with_the_lr_outside_the_buffer():
    w0 = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)   # ||w0|| = 3
    g1 = torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64)
    g2 = torch.tensor([-0.2, 0.1, 0.4], dtype=torch.float64)
    m, wd, eta, lr1, lr2 = 0.9, 0.05, 0.02, 0.4, 0.1
    w = nn.Parameter(w0.clone())
    opt = LARS([w], lr=lr1, momentum=m, weight_decay=wd, eta=eta)
    w.grad = g1.clone()
    opt.step()
    opt.param_groups[0]["lr"] = lr2          # a schedule changes the lr between steps
    w.grad = g2.clone()
    opt.step()

    d1 = g1 + wd * w0
    v1 = eta * w0.norm() / d1.norm() * d1
    w1 = w0 - lr1 * v1
    d2 = g2 + wd * w1
    v2 = m * v1 + eta * w1.norm() / d2.norm() * d2
    w2 = w1 - lr2 * v2                       # the new lr scales the whole buffer
    torch.testing.assert_close(w.detach(), w2)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], v2)


def test_nesterov_step():
    w0 = torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64)
    g1 = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    g2 = torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64)
    m, eta, lr = 0.9, 0.1, 0.3
    w = nn.Parameter(w0.clone())
    opt = LARS([w], lr=lr, momentum=m, eta=eta, nesterov=True)
    w.grad = g1.clone()
    opt.step()
    w.grad = g2.clone()
    opt.step()
    d1 = eta * w0.norm() / g1.norm() * g1
    v1 = d1
    w1 = w0 - lr * (d1 + m * v1)
    d2 = eta * w1.norm() / g2.norm() * g2
    v2 = m * v1 + d2
    torch.testing.assert_close(w.detach(), w1 - lr * (d2 + m * v2))


@pytest.mark.parametrize("nesterov", [False, True])
def test_excluded_params_are_plain_sgd_with_momentum_and_no_weight_decay(nesterov):
    torch.manual_seed(1)
    a = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    b = nn.Parameter(torch.randn(7, dtype=torch.float64))
    ref_a, ref_b = nn.Parameter(a.detach().clone()), nn.Parameter(b.detach().clone())
    lars = LARS([{"params": [a, b], "lars_exclude": True}], lr=0.1, weight_decay=0.5, nesterov=nesterov)
    sgd = torch.optim.SGD([ref_a, ref_b], lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=nesterov)
    for _ in range(4):
        grads = [torch.randn_like(a), torch.randn_like(b)]
        for p, q, g in zip((a, b), (ref_a, ref_b), grads):
            p.grad, q.grad = g.clone(), g.clone()
        lars.step()
        sgd.step()
        torch.testing.assert_close(a.detach(), ref_a.detach(), rtol=0, atol=1e-14)
        torch.testing.assert_close(b.detach(), ref_b.detach(), rtol=0, atol=1e-14)


def test_zero_weight_gets_a_finite_plain_sgd_step():
    w = _param([0.0, 0.0, 0.0])
    w.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    LARS([w], lr=0.1, weight_decay=0.1, eta=0.001).step()
    # ||w|| = 0: trust 1.0 (not 0, which would freeze w at 0); wd * 0 adds nothing
    torch.testing.assert_close(w.detach(), torch.tensor([-0.1, 0.2, -0.05], dtype=torch.float64))


def test_zero_gradient_gives_a_finite_step():
    w = _param([1.0, 2.0])
    opt = LARS([w], lr=0.1, momentum=0.9, eta=0.001)
    w.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()                               # ||g|| = 0: trust 1.0, nothing moves, no nan
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], torch.zeros(2, dtype=torch.float64))

    w.grad = torch.tensor([0.0, 4.0], dtype=torch.float64)
    opt.step()                               # trust = 0.001 * sqrt(5) / 4
    v = 0.001 * math.sqrt(5.0) / 4.0 * torch.tensor([0.0, 4.0], dtype=torch.float64)
    w1 = torch.tensor([1.0, 2.0], dtype=torch.float64) - 0.1 * v
    torch.testing.assert_close(w.detach(), w1)
    w.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()                               # zero gradient again: momentum carries on, finite
    torch.testing.assert_close(w.detach(), w1 - 0.1 * 0.9 * v)


def test_zero_weight_and_zero_gradient_stay_zero():
    w = _param([0.0, 0.0])
    w.grad = torch.zeros(2, dtype=torch.float64)
    opt = LARS([w], lr=1.0, weight_decay=0.1)
    opt.step()
    assert torch.equal(w.detach(), torch.zeros(2, dtype=torch.float64))
    assert torch.isfinite(opt.state[w]["momentum_buffer"]).all()


def test_params_without_grad_are_skipped():
    w, frozen = _param([1.0, 1.0]), _param([2.0, 2.0])
    w.grad = torch.ones(2, dtype=torch.float64)
    opt = LARS([w, frozen], lr=0.1)
    opt.step()
    assert torch.equal(frozen.detach(), torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert frozen not in opt.state and w in opt.state


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5], [1.0]]) + 0.3
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=g))
        model.bias.zero_()
    return x, y, model


def _groups(model):
    return [{"params": [model.weight], "weight_decay": 1e-4},
            {"params": [model.bias], "weight_decay": 0.0, "lars_exclude": True}]


def test_closure_and_loss_decreases_on_a_tiny_regression():
    x, y, model = _regression()
    opt = LARS(_groups(model), lr=0.5, momentum=0.9, eta=0.02)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(200)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.01 * losses[0]


def test_state_dict_round_trip_resumes_exactly():
    x, y, model = _regression(seed=3)
    opt = LARS(_groups(model), lr=0.2, momentum=0.9, eta=0.01, nesterov=True)

    def train(m, o, steps):
        for _ in range(steps):
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            o.step()

    train(model, opt, 5)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    assert all("momentum_buffer" in s for s in saved_opt["state"].values())

    _, _, resumed = _regression(seed=99)
    resumed.load_state_dict(saved_model)
    resumed_opt = LARS(_groups(resumed), lr=1.0)          # hyperparameters come from the checkpoint
    resumed_opt.load_state_dict(saved_opt)
    assert resumed_opt.param_groups[1]["lars_exclude"] is True
    assert resumed_opt.param_groups[0]["eta"] == 0.01

    train(model, opt, 5)
    train(resumed, resumed_opt, 5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-1.0), "lr"), (dict(lr=0.1, momentum=-0.1), "momentum"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"), (dict(lr=0.1, eta=0.0), "eta"),
    (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
])
def test_invalid_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LARS([_param([1.0])], **kwargs)
