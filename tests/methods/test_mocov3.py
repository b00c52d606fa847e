"""MoCo v3 on a small ResNet-18 and tiny random batches: the heads of `MoCo_ResNet`, the momentum
update before the keys, keys without gradient, the symmetric loss scaled by 2T, the predictor on
the online branch only, the momentum schedule, config refusals, one SGD step."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslpipe.losses import moco_v3_ctr
from sslpipe.methods import METHODS, MoCoV3, Step
from sslpipe.models import resnet18
from sslpipe.optim.param_groups import param_groups
from sslpipe.pipeline.batch import Batch

N = 8
SMALL = dict(projector=(64, 32), predictor_hidden=16)


def _build(seed=0, **config):
    torch.manual_seed(seed)
    return MoCoV3(resnet18(small_images=True), MoCoV3.Config(**{**SMALL, **config}), global_batch=N).train()


def _views(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, 8, 8, generator=g) for _ in range(2)]


def _batch(views):
    return Batch.from_views(views, names=["view1", "view2"])


def _step(m):
    return Step(values={"ema_momentum": m})


def _perturb_online(method):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*method.backbone.parameters(), *method.projector.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _online(method):
    return [*method.backbone.parameters(), *method.projector.parameters()]


def _momentum(method):
    copies = method.momentum_encoder
    return [*copies["backbone"].parameters(), *copies["projector"].parameters()]


def test_registered_and_the_heads_of_moco_resnet():
    assert METHODS["mocov3"] is MoCoV3
    method = _build(projector=(40, 24), predictor_hidden=20)
    kinds = [type(m) for m in method.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert kinds[:4] == [type(m) for m in method.predictor] and len(method.predictor) == 4
    assert method.projector[1].affine and not method.projector[4].affine  # last BN without gamma/beta
    assert method.predictor[1].affine
    shapes = [(m.in_features, m.out_features) for m in [*method.projector, *method.predictor]
              if isinstance(m, nn.Linear)]
    assert shapes == [(512, 40), (40, 24), (24, 20), (20, 24)]
    assert all(m.bias is None for m in method.modules() if isinstance(m, nn.Linear))  # bias=False everywhere
    # The momentum encoder: backbone + projector, no predictor; equal to the online at the start.
    assert list(method.momentum_encoder.copies) == ["backbone", "projector"]
    for a, b in zip(_online(method), _momentum(method)):
        assert torch.equal(a, b) and not b.requires_grad


def test_momentum_update_comes_before_the_keys_and_the_loss_is_symmetric_scaled_by_2t():
    method = _build(temperature=0.7)
    _perturb_online(method)
    m = 0.9
    old = [p.detach().clone() for p in _momentum(method)]
    online = [p.detach().clone() for p in _online(method)]
    # The momentum encoder as it will be after the update, replayed on a copy.
    replay = copy.deepcopy(method.momentum_encoder)
    with torch.no_grad():
        replayed = [*replay["backbone"].parameters(), *replay["projector"].parameters()]
        for p, before, q in zip(replayed, old, online):
            p.copy_(m * before + (1 - m) * q)
    twin = copy.deepcopy(method)  # the online branch's forward, replayed
    views = _views()
    out = method(_batch(views), _step(m))

    for after, before, q in zip(_momentum(method), old, online):
        torch.testing.assert_close(after, m * before + (1 - m) * q)
    with torch.no_grad():
        k1, k2 = (replay(v) for v in views)
        q1, q2 = (twin.predictor(twin.projector(twin.backbone(v))) for v in views)
    assert k1.shape == q1.shape == (N, 32)
    torch.testing.assert_close(out.loss, moco_v3_ctr(q1, k2, 0.7) + moco_v3_ctr(q2, k1, 0.7))
    # By hand: CE of normalized q against all keys, label = own row, times 2T, both directions.
    by_hand = sum(F.cross_entropy(F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / 0.7, torch.arange(N))
                  * 2 * 0.7 for q, k in ((q1, k2), (q2, k1)))
    torch.testing.assert_close(out.loss, by_hand)
    assert out.metrics["candidates"] == N


def test_swapping_the_views_gives_the_same_loss():
    method = _build()
    _perturb_online(method)
    views = _views(seed=2)
    with torch.no_grad():  # m = 1: the momentum encoder stays where it is between the two calls
        a = method(_batch(views), _step(1.0)).loss
        b = method(_batch(views[::-1]), _step(1.0)).loss
    torch.testing.assert_close(a, b)


def test_the_loss_reaches_the_online_encoder_and_predictor_only():
    method = _build()
    _perturb_online(method)
    out = method(_batch(_views()), _step(0.99))
    out.loss.backward()
    assert all(p.grad is not None for p in [*_online(method), *method.predictor.parameters()])
    assert all(p.grad is None for p in _momentum(method))
    assert not any(p.requires_grad for p in method.momentum_encoder.parameters())
    # The optimizer never sees the momentum encoder.
    groups = param_groups(method, weight_decay=1e-6, exclude_bias_and_norm=True)
    names = [n for g in groups for n in g["names"]]
    assert names and not any(n.startswith("momentum_encoder.") for n in names)


def test_momentum_schedule_cosine_to_one_per_step_or_constant():
    values = _build().schedules(11)["ema_momentum"]
    assert values[0] == pytest.approx(0.99) and values[-1] == 1.0
    k = np.arange(11)
    np.testing.assert_allclose(values, 1 - 0.5 * (1 + np.cos(np.pi * k / 10)) * (1 - 0.99))
    np.testing.assert_array_equal(_build(momentum_schedule="constant").schedules(5)["ema_momentum"],
                                  np.full(5, 0.99))


@pytest.mark.parametrize("field, value", [("temperature", 0.0), ("momentum", 1.5), ("momentum", -0.1),
                                          ("projector", ()), ("projector", (64, 0)), ("predictor_hidden", 0)])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MoCoV3.Config(**{field: value})


def test_needs_two_views():
    needed = _build().views_needed()
    assert needed.count == 2 and not needed.same_size


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    method = _build()
    views = _views(seed=3)
    step = _step(1.0)  # the momentum encoder stays put: the same keys for the second evaluation
    out = method(_batch(views), step)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert 0 < out.metrics["embedding_std"].item() < 1
    optimizer = torch.optim.SGD(param_groups(method, weight_decay=0.0, exclude_bias_and_norm=True), lr=0.005)
    out.loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = method(_batch(views), step).loss
    assert after.item() < out.loss.item() - 1e-4
