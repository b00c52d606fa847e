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


def test_sparse_gradients_are_refused():
    w = nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.zeros(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        LARS([w], lr=0.1).step()


class LoopLARS(LARS):
    """The per-parameter loop LARS was before the foreach rewrite (verbatim), as the reference."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            weight_decay, eta = group["weight_decay"], group["eta"]
            nesterov, exclude = group["nesterov"], group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                g = p.grad
                if not exclude:
                    if weight_decay != 0.0:
                        g = g.add(p, alpha=weight_decay)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    # The division's inf/nan (a zero norm) lands only in the branch not taken.
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust

                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf.mul_(momentum).add_(g)
                update = g.add(buf, alpha=momentum) if nesterov else buf
                p.add_(update, alpha=-lr)
        return loss


def _mixed_params():
    """Named parameters covering the cases: matrices, a channels_last conv weight, float64 next to
    float32 in one group, a zero-initialised weight, biases, and one left without a gradient."""
    g = torch.Generator().manual_seed(7)
    values = {
        "fc": torch.randn(6, 5, generator=g),
        "conv": torch.randn(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last),
        "double": torch.randn(7, dtype=torch.float64, generator=g).reshape(7, 1),
        "zero": torch.zeros(3, 4),
        "frozen": torch.randn(2, 2, generator=g),   # no gradient until step 3
        "bias": torch.randn(5, generator=g),
        "gamma": torch.zeros(4),                    # excluded and zero: plain SGD from 0
        "scale": torch.tensor(2.0),                 # 0-dim
    }
    return {name: nn.Parameter(v.clone(memory_format=torch.preserve_format)) for name, v in values.items()}


def _mixed_groups(params):
    return [
        {"params": [params[n] for n in ("fc", "conv", "double", "frozen")], "weight_decay": 1e-2},
        {"params": [params[n] for n in ("bias", "gamma")], "lars_exclude": True, "weight_decay": 0.5,
         "nesterov": True},
        {"params": [params[n] for n in ("zero", "scale")], "weight_decay": 0.0, "eta": 0.02,
         "nesterov": True},
    ]


def test_foreach_step_equals_the_per_parameter_loop_bitwise():
    # On the CPU the foreach ops run tensor by tensor with the same kernels: equal to the last bit.
    ours, ref = _mixed_params(), _mixed_params()
    opt = LARS(_mixed_groups(ours), lr=0.1, momentum=0.9, eta=1e-3)
    ref_opt = LoopLARS(_mixed_groups(ref), lr=0.1, momentum=0.9, eta=1e-3)
    gen = torch.Generator().manual_seed(11)
    for step, (lr, wd) in enumerate([(0.1, 1e-2), (0.5, 1e-3), (0.05, 0.0), (0.2, 1e-2), (1.0, 1e-4)]):
        for o in (opt, ref_opt):              # a schedule's lr everywhere, its wd in the first group
            for group in o.param_groups:
                group["lr"] = lr
            o.param_groups[0]["weight_decay"] = wd
        for name in ours:
            if name == "frozen" and step < 3:
                continue
            grad = torch.randn(ours[name].shape, generator=gen, dtype=ours[name].dtype)
            if name == "fc" and step == 2:
                grad.zero_()                          # zero gradient norm: trust 1.0
            grad = grad.contiguous(memory_format=torch.preserve_format)
            ours[name].grad = grad.clone(memory_format=torch.preserve_format)
            ref[name].grad = grad.clone(memory_format=torch.preserve_format)
        if step == 3:
            ours["scale"].grad = ref["scale"].grad = None  # skipped this step, its buffer stays
        opt.step()
        ref_opt.step()
        for name in ours:
            assert torch.equal(ours[name], ref[name]), (step, name)
            assert torch.isfinite(ours[name]).all()
            assert (ours[name] in opt.state) == (ref[name] in ref_opt.state), (step, name)
            if ours[name] in opt.state:
                buf = opt.state[ours[name]]["momentum_buffer"]
                ref_buf = ref_opt.state[ref[name]]["momentum_buffer"]
                assert torch.equal(buf, ref_buf) and buf.stride() == ref_buf.stride(), (step, name)
        assert (ours["frozen"] in opt.state) == (step >= 3)
    assert not torch.equal(ours["zero"], torch.zeros(3, 4))   # the zero weight moved
    assert opt.state_dict()["state"].keys() == ref_opt.state_dict()["state"].keys()


@pytest.fixture(scope="module")
def resnet50_with_grads():
    from sslpipe.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("resnet50")
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    return model


@pytest.mark.parametrize("exclude_bias_and_norm", [True, False], ids=["simclr-groups", "swav-groups"])
def test_a_resnet50_step_is_a_few_dozen_launches_and_no_sync(resnet50_with_grads, exclude_bias_and_norm):
    # The recipes' groups (sslpipe.train.loop.build_optimizer); the second step, buffers existing.
    from sslpipe.counting import DispatchCounter
    from sslpipe.optim import param_groups

    model = resnet50_with_grads
    launches = {}
    for cls in (LARS, LoopLARS) if exclude_bias_and_norm else (LARS,):
        groups = param_groups(model, weight_decay=1e-6, exclude_bias_and_norm=exclude_bias_and_norm)
        opt = cls(groups, lr=0.3, momentum=0.9, weight_decay=1e-6, eta=1e-3)
        opt.step()
        with DispatchCounter(roots=[model, opt]) as counted:
            opt.step()
        assert counted.sync_count == 0, counted.syncs
        launches[cls.__name__] = counted.launches
    print(f"launches per ResNet-50 LARS step: {launches}")
    assert launches["LARS"] <= 40
    if "LoopLARS" in launches:
        assert launches["LoopLARS"] > 1000              # what the per-parameter loop cost
