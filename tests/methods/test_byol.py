"""BYOL on a small ResNet-18 and tiny batches: the loss against a replay of the networks, the
target's EMA after the optimizer step (parameters, not BN buffers), its stop-gradient, the
predictor on the online side only, the momentum schedule, config refusals, one SGD step."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from sslpipe.counting import DispatchCounter
from sslpipe.errors import SslpipeError
from sslpipe.losses import regression_loss
from sslpipe.methods import BYOL, Step
from sslpipe.models import resnet18
from sslpipe.optim.param_groups import param_groups
from sslpipe.pipeline.batch import Batch
from sslpipe.pipeline.spec import load_spec
from sslpipe.train.config import load_config

N = 8
ROOT = __import__("pathlib").Path(__file__).parents[2]


def _byol(seed=0, **config):
    torch.manual_seed(seed)
    config = {"projector": (32, 16), "predictor_hidden": 32, **config}
    return BYOL(resnet18(small_images=True), BYOL.Config(**config), global_batch=N).train()


def _views(seed=0, size=8):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, size, size, generator=generator) for _ in range(2)]


def _batch(views):
    return Batch.from_views(views, names=["view1", "view2"])


def _step(m, **kwargs):
    return Step(values={"ema_momentum": m}, **kwargs)


def _online(method):
    return [*method.backbone.parameters(), *method.projector.parameters()]


def _target(method):
    return [*method.target["backbone"].parameters(), *method.target["projector"].parameters()]


def _perturb_online(method):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in _online(method):
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def test_loss_is_both_directions_of_the_regression_loss_added():
    method = _byol()
    _perturb_online(method)  # the target differs from the online network
    views = _views()
    target = copy.deepcopy(method.target)
    with torch.no_grad():
        out = method(_batch(views), _step(0.99))
        online = copy.deepcopy(method)  # train mode: a second pass gives the same outputs
        z = [online.projector(online.backbone(v)) for v in views]
        p = [online.predictor(zi) for zi in z]
        t = [target(v) for v in views]
    expected = regression_loss(p[0], t[1]) + regression_loss(p[1], t[0])
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.dtype == torch.float32 and 0 < out.loss.item() < 8
    assert out.metrics["embedding_std_ref"] == pytest.approx(16 ** -0.5)


def test_one_forward_per_view_so_bn_statistics_are_per_view():
    method = _byol()
    seen = []
    method.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        method(_batch(_views()), _step(0.99))
    assert seen == [N, N]


def test_the_target_moves_after_the_optimizer_step_by_ema_of_parameters_not_buffers():
    method = _byol()
    _perturb_online(method)
    m = 0.9
    views = _views()
    before = [p.detach().clone() for p in _target(method)]
    with torch.no_grad():
        method(_batch(views), _step(m))
    # The forward leaves the target's parameters alone (its BN statistics move with its batches).
    for p, q in zip(_target(method), before):
        assert torch.equal(p, q)
    buffers = {k: v.clone() for k, v in method.target.named_buffers()}
    online = [p.detach().clone() for p in _online(method)]
    method.after_optimizer_step(_step(m))
    for after, old, q in zip(_target(method), before, online):
        torch.testing.assert_close(after, m * old + (1 - m) * q)
    for name, value in method.target.named_buffers():  # BN buffers: not averaged
        assert torch.equal(value, buffers[name]), name
    online_bn = dict(method.backbone.named_buffers())["bn1.running_mean"]
    assert not torch.allclose(dict(method.target.named_buffers())["copies.backbone.bn1.running_mean"],
                              m * buffers["copies.backbone.bn1.running_mean"] + (1 - m) * online_bn)


def test_the_target_gets_no_gradient_and_holds_no_predictor():
    method = _byol()
    out = method(_batch(_views()), _step(0.99))
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in _target(method))
    assert all(p.grad is not None for p in [*_online(method), *method.predictor.parameters()])
    assert set(method.target.copies) == {"backbone", "projector"}
    assert not any("predictor" in k for k in method.target.state_dict())
    trainable = {n for group in param_groups(method, weight_decay=1e-6, exclude_bias_and_norm=True)
                 for n in group["names"]}
    assert not any(n.startswith("target.") for n in trainable)


def test_heads_have_the_official_shapes_and_no_output_bias():
    method = BYOL(resnet18(), BYOL.Config(), global_batch=N)
    linears = [m for m in method.projector.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 4096), (4096, 256)]
    assert linears[-1].bias is None
    norms = [m for m in method.projector.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 1 and norms[0].num_features == 4096
    linears = [m for m in method.predictor.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 4096), (4096, 256)]
    assert linears[-1].bias is None
    assert _byol(last_bias=True).projector[-1].bias is not None


def test_momentum_schedule_is_the_cosine_to_one_indexed_by_the_step():
    method = _byol(momentum=0.996)
    tau = method.schedules(11)["ema_momentum"]
    k = np.arange(11)
    np.testing.assert_allclose(tau, 1 - (1 - 0.996) * (np.cos(np.pi * k / 10) + 1) / 2)
    assert tau[0] == pytest.approx(0.996) and tau[-1] == 1.0 and np.all(np.diff(tau) > 0)
    constant = _byol(momentum=0.99, momentum_schedule="constant").schedules(5)["ema_momentum"]
    np.testing.assert_array_equal(constant, np.full(5, 0.99))


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    method = _byol()
    views = _views()
    step = _step(1.0)  # the target stays where it is: the second loss is against the same targets
    out = method(_batch(views), step)
    optimizer = torch.optim.SGD(param_groups(method, weight_decay=0.0, exclude_bias_and_norm=True), lr=0.001)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    method.after_optimizer_step(step)
    with torch.no_grad():
        after = method(_batch(views), step).loss
    assert after.item() < out.loss.item() - 1e-4


def test_a_step_syncs_nothing_with_the_host():
    method = _byol()
    batch = _batch(_views())
    with DispatchCounter(roots=[method, *batch.views]) as counter:
        out = method(batch, _step(0.99))
        out.loss.backward()
        method.after_optimizer_step(_step(0.99))
    assert counter.sync_count == 0, dict(counter.syncs)
    assert math.isfinite(out.loss.item())


def test_views_and_config_refusals():
    needed = _byol().views_needed()
    assert not needed.problems(load_spec("byol")) and not needed.problems(load_spec("small_byol"))
    assert needed.problems(load_spec("small_swav_multicrop"))
    for bad, match in [({"projector": ()}, "projector"), ({"projector": (0, 16)}, "projector"),
                       ({"predictor_hidden": 0}, "predictor_hidden"), ({"momentum": 1.5}, "momentum")]:
        with pytest.raises(ValueError, match=match):
            BYOL.Config(**bad)
    with pytest.raises(SslpipeError, match="momentum_schedule"):
        load_config(ROOT / "recipes" / "byol_small.yaml", ["method.momentum_schedule=linear"])


def test_the_recipes_carry_the_official_settings():
    c = load_config(ROOT / "recipes" / "byol_r50_imagenet.yaml")
    assert (c.method.momentum, c.method.projector, c.method.predictor_hidden) == (0.996, (4096, 256), 4096)
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs, c.optim.eta) == \
        ("lars", 0.2, 1.5e-6, 10, 1e-3)
    assert c.optim.exclude_bias_and_norm and c.model.sync_bn and c.data.batch_size == 4096
    assert c.train.epochs == 1000 and c.data.pipeline == "byol"
