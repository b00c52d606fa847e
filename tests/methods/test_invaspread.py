"""InvaSpread on a small ResNet-18 and tiny random batches: the linear embedding head, both views
in one forward, the loss of `batch_criterion`, gradient flow, config refusals, one SGD step."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslpipe.losses import batch_criterion
from sslpipe.methods import METHODS, InvaSpread, Step
from sslpipe.models import resnet18
from sslpipe.optim.param_groups import param_groups
from sslpipe.pipeline.batch import Batch

N = 8


def _build(seed=0, **config):
    torch.manual_seed(seed)
    return InvaSpread(resnet18(small_images=True), InvaSpread.Config(**config), global_batch=N).train()


def _views(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, 8, 8, generator=g) for _ in range(2)]


def _batch(views):
    return Batch.from_views(views, names=["global", "global"])


def test_registered_and_the_head_is_one_linear_with_bias():
    assert METHODS["invaspread"] is InvaSpread
    method = _build(dim=24)
    assert isinstance(method.head, nn.Linear) and method.head.bias is not None
    assert (method.head.in_features, method.head.out_features) == (512, 24)
    assert [n for n, _ in method.named_children()] == ["backbone", "head"]  # no MLP, bank or EMA copy


def test_loss_is_batch_criterion_of_the_normalized_embeddings_of_one_2n_batch():
    method = _build(temperature=0.2)
    twin = copy.deepcopy(method)
    views = _views()
    out = method(_batch(views), Step())
    with torch.no_grad():
        # Both views in one BN batch, as torch.cat((inputs1, inputs2)) in demo_seen.py.
        f = F.normalize(twin.head(twin.backbone(torch.cat(views))), dim=1)
    expected, candidates = batch_criterion(f[:N], f[N:], 0.2)
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["candidates"] == candidates == 2 * N
    # Not two BN batches: the per-view forward gives other embeddings.
    with torch.no_grad():
        separate = [F.normalize(twin.head(twin.backbone(v)), dim=1) for v in views]
    assert not torch.allclose(separate[0], f[:N], atol=1e-4)


def test_gradient_reaches_the_backbone_and_the_head():
    method = _build()
    method(_batch(_views()), Step()).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())
    assert method.head.weight.grad.abs().sum() > 0 and method.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("field, value", [("temperature", 0.0), ("temperature", -1.0), ("dim", 0),
                                          ("neg_m", 0.5)])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        InvaSpread.Config(**{field: value})


def test_needs_two_views_of_one_size():
    needed = _build().views_needed()
    assert needed.count == 2 and needed.same_size


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    method = _build()
    views = _views(seed=3)
    out = method(_batch(views), Step())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert 0 < out.metrics["embedding_std"].item() < 1
    optimizer = torch.optim.SGD(param_groups(method, weight_decay=0.0, exclude_bias_and_norm=False), lr=0.005)
    out.loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = method(_batch(views), Step()).loss
    assert after.item() < out.loss.item() - 1e-4
