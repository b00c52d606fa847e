"""InstDisc on a small ResNet-18 and 8 px batches: the loss against the bank as it was before the
step, the bank rows moved after it (momentum 0.5, renormalized) at the batch's indices only, the
negatives drawn from the step's generator, Z estimated once, the objectives, the refusals, one SGD
step, and no host sync in a step."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from sslpipe.counting import DispatchCounter
from sslpipe.losses import bank_scores, bank_softmax, nce_loss, nce_normalizer
from sslpipe.methods import METHODS, InstDisc, Step
from sslpipe.methods.instdisc import draw_rows
from sslpipe.models import resnet18
from sslpipe.optim.param_groups import param_groups
from sslpipe.pipeline.batch import Batch

B, SAMPLES, K, DIM = 8, 40, 16, 32
LR = 0.005


def _build(seed=0, samples=SAMPLES, **config):
    torch.manual_seed(seed)
    config = {"negatives": K, "dim": DIM, **config}
    return InstDisc(resnet18(small_images=True), InstDisc.Config(**config), global_batch=B, samples=samples)


def _batch(seed=0, index=None):
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(SAMPLES, generator=generator)[:B] if index is None else index
    return Batch.from_views([torch.randn(B, 3, 8, 8, generator=generator)], index=index)


def _step(index=3, seed=0, rank=0):
    return Step(index=index, seed=seed, rank=rank, values={"bank_momentum": 0.5})


def _features(method, batch):
    """What the forward computes, in the same (train) mode: BN from the batch's statistics."""
    with torch.no_grad():
        return F.normalize(method.head(method.backbone(batch.views[0])), dim=1)


def test_registered_with_one_view_and_a_bank_row_per_sample():
    assert METHODS["instdisc"] is InstDisc
    method = _build()
    assert method.views_needed().count == 1
    assert method.bank.rows.shape == (SAMPLES, DIM) and method.head.out_features == DIM
    assert method.schedules(4)["bank_momentum"].tolist() == [0.5] * 4


@pytest.mark.parametrize("objective", ["nce", "softmax", "full_softmax"])
def test_the_loss_reads_the_bank_before_the_step_and_the_rows_move_after_it(objective):
    method = _build(objective=objective).train()
    batch, step = _batch(), _step()
    before = method.bank.rows.clone()
    f = _features(method, batch)
    out = method(batch, step)
    rows = draw_rows(batch.index, K, SAMPLES, _step())  # the same step: the same draws
    if objective == "full_softmax":
        expected = bank_softmax(f @ before.t(), 0.07, target=batch.index)
    else:
        scores = bank_scores(f, before[rows])
        expected = bank_softmax(scores, 0.07) if objective == "softmax" else \
            nce_loss(scores, 0.07, nce_normalizer(scores, 0.07, SAMPLES), SAMPLES)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)
    after = method.bank.rows
    moved = F.normalize(0.5 * before[batch.index] + 0.5 * f, dim=1)
    torch.testing.assert_close(after[batch.index], moved, rtol=1e-5, atol=1e-6)
    assert torch.allclose(after[batch.index].norm(dim=1), torch.ones(B))
    others = torch.ones(SAMPLES, dtype=torch.bool)
    others[batch.index] = False
    assert torch.equal(after[others], before[others])  # only the batch's rows
    assert 0 < out.metrics["embedding_std"].item() < 1 and "positive_score" in out.metrics


def test_negatives_come_from_the_step_s_generator():
    index = torch.arange(B)
    a, b = draw_rows(index, K, SAMPLES, _step()), draw_rows(index, K, SAMPLES, _step())
    assert torch.equal(a, b) and a.shape == (B, K + 1)
    assert torch.equal(a[:, 0], index)  # the positive: each sample's own row
    assert 0 <= a.min() and a.max() < SAMPLES
    assert not torch.equal(a, draw_rows(index, K, SAMPLES, _step(rank=1)))  # another rank
    assert not torch.equal(a, draw_rows(index, K, SAMPLES, _step(index=4)))  # another step


def test_z_is_estimated_on_the_first_batch_only():
    method = _build(objective="nce").train()
    first, second = _batch(0), _batch(1)
    f = _features(method, first)
    bank = method.bank.rows.clone()
    out = method(first, _step(index=0))
    rows = draw_rows(first.index, K, SAMPLES, _step(index=0))
    z = nce_normalizer(bank_scores(f, bank[rows]), 0.07, SAMPLES)
    assert method.z.value.item() == pytest.approx(z.item(), rel=1e-5)
    assert out.metrics["nce_z"].item() == method.z.value.item()
    method(second, _step(index=1))
    assert method.z.value.item() == pytest.approx(z.item(), rel=1e-5)  # fixed
    assert "z.value" in method.state_dict()  # saved with the model, restored on resume


def test_refusals():
    with pytest.raises(ValueError, match="needs samples="):
        _build(samples=None)
    with pytest.raises(ValueError, match=r"negatives \(40\) must be fewer than the 40 training samples"):
        _build(negatives=40)
    _build(objective="full_softmax", negatives=4096)  # negatives are not drawn then
    for field, value in (("negatives", 0), ("temperature", 0.0), ("bank_momentum", 1.0), ("dim", 0)):
        with pytest.raises(ValueError, match=field):
            InstDisc.Config(**{field: value})


@pytest.mark.parametrize("objective", ["nce", "softmax", "full_softmax"])
def test_one_sgd_step_lowers_the_loss_on_the_same_batch(objective):
    method = _build(objective=objective).train()
    batch, step = _batch(), _step()
    bank = method.bank.rows.clone()
    out = method(batch, step)
    with torch.no_grad():
        method.bank.rows.copy_(bank)  # the same negatives and positives for the second evaluation
    optimizer = torch.optim.SGD(param_groups(method, weight_decay=0.0, exclude_bias_and_norm=True), lr=LR)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    assert method.bank.rows.grad is None and method.head.weight.grad is not None
    optimizer.step()
    with torch.no_grad():
        after = method(batch, step).loss
    assert after.item() < out.loss.item() - 1e-4


@pytest.mark.parametrize("objective", ["nce", "full_softmax"])
def test_a_step_does_not_sync_the_host(objective):
    method = _build(objective=objective).train()
    batch = _batch()
    for index in range(2):  # the first step estimates Z, the second reads it
        with DispatchCounter(roots=[method, *batch.views, batch.index]) as counter:
            out = method(batch, _step(index=index))
            out.loss.backward()
        assert counter.syncs == Counter(), dict(counter.syncs)
