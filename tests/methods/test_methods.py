"""The four methods on a small ResNet-18 and tiny random batches: the loss against hand-written
formulas, one SGD step, MoCo's EMA / queue / BN handling, SplitBatchNorm2d, SwAV's prototypes,
multi-crop and queue, SimSiam's stop-gradient, and the collapse monitor.

Inputs are 8 px (32 px where multi-crop asks for it) and heads are tiny, to keep the file fast
on two CPU cores; every forward that needs no gradient runs under `torch.no_grad()`.
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslpipe.losses import nt_xent, sinkhorn, swapped_prediction
from sslpipe.methods import MoCo, SimCLR, SimSiam, Step, SwAV
from sslpipe.methods.base import embedding_std, encode_groups, health_metrics
from sslpipe.models import resnet18
from sslpipe.models.split_batchnorm import SplitBatchNorm2d, split_batchnorm
from sslpipe.optim.param_groups import param_groups
from sslpipe.pipeline.batch import Batch

N = 8  # the global batch (one process)


def _views(count=2, size=8, n=N, seed=0, sizes=None):
    """`count` seeded (n, 3, size, size) batches, or one per entry of `sizes`."""
    generator = torch.Generator().manual_seed(seed)
    sizes = sizes or [size] * count
    return [torch.randn(n, 3, s, s, generator=generator) for s in sizes]


def _batch(views):
    """The views as a loader's batch: the first two named "global", the others "local"."""
    return Batch.from_views(views, names=["global"] * min(2, len(views)) + ["local"] * (len(views) - 2))


def _momentum(m, **step):
    return Step(values={"ema_momentum": m}, **step)


def _build(cls, seed=0, **config):
    torch.manual_seed(seed)
    return cls(resnet18(small_images=True), cls.Config(**config), global_batch=N)


SMALL = {
    "simclr": (SimCLR, dict(projector=(64, 32), temperature=0.5)),
    "mocov2": (MoCo, dict(head=(64, 32), queue_size=32, bn_splits=2)),
    "swav": (SwAV, dict(prototypes=20, projector=(64, 32), freeze_prototypes_steps=0)),
    "simsiam": (SimSiam, dict(projector=(64, 64), predictor_hidden=16)),
}
# SwAV needs more views than its 2 global crops: 2 x 8 px + 2 x 4 px local crops.
VIEW_SIZES = {"simclr": [8, 8], "mocov2": [8, 8], "swav": [8, 8, 4, 4], "simsiam": [8, 8]}
OUT_DIM = {"simclr": 32, "mocov2": 32, "swav": 32, "simsiam": 64}
# A fresh ResNet on noise has large gradients (norm ~100) and a sharp loss: 0.05 and more can
# overshoot, while 0.002-0.02 lower every loss. 0.005 sits in the middle.
LR = 0.005


def _check_output(out, dim):
    assert out.loss.ndim == 0 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert {"embedding_std", "embedding_std_ref"} <= set(out.metrics)
    assert out.metrics["embedding_std_ref"] == pytest.approx(dim ** -0.5)  # a float: known on the host
    assert 0 < out.metrics["embedding_std"].item() < 1


# ---------------------------------------------------------------- every method: one SGD step


@pytest.mark.parametrize("name", list(SMALL))
def test_one_sgd_step_lowers_the_loss_on_the_same_batch(name):
    cls, config = SMALL[name]
    method = _build(cls, **config).train()
    views = _views(sizes=VIEW_SIZES[name])
    # ema_momentum=1.0: MoCo's key encoder stays exactly where it is (m*old + 0*online), so the
    # keys of the second evaluation come from the same encoder (its BN is in train mode: batch
    # statistics, the running buffers it updates play no part). index >= SwAV's
    # freeze_prototypes_steps, so the prototypes learn too.
    step = _momentum(1.0, index=3, epoch=0, seed=0)
    # MoCo's forward enqueues its keys: restore the queue so the re-evaluation sees the same negatives.
    saved = {k: v.clone() for k, v in method.named_buffers() if k.startswith("queue.")}
    out = method(_batch(views), step)
    _check_output(out, OUT_DIM[name])
    with torch.no_grad():
        for key, value in saved.items():
            method.get_buffer(key).copy_(value)
        if saved:
            method.queue.state_loaded()

    optimizer = torch.optim.SGD(param_groups(method, weight_decay=0.0, exclude_bias_and_norm=True,
                                             fixed_lr_prefixes=method.fixed_lr_prefixes), lr=LR)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    method.before_optimizer_step(step)
    optimizer.step()
    with torch.no_grad():
        after = method(_batch(views), step).loss
    assert after.item() < out.loss.item() - 1e-4


# ---------------------------------------------------------------- SimCLR


def test_simclr_loss_is_nt_xent_of_the_projections():
    method = _build(SimCLR, projector=(64, 32), temperature=0.5).train()
    views = _views()
    with torch.no_grad():
        out = method(_batch(views), Step())
        # Train mode: BN uses the batch's statistics, so a second pass gives the same projections.
        z = method.projector(method.backbone(torch.cat(views)))   # both views in one BN batch
    z1, z2 = z.chunk(2)
    expected, candidates = nt_xent(z1, z2, 0.5)
    torch.testing.assert_close(out.loss, expected)
    # By hand: 2N anchors against the 2N views except themselves, the partner at i +- N,
    # the two directions (each a mean) summed.
    h = F.normalize(z, dim=1)
    logits = (h @ h.t() / 0.5).fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(N) + N, torch.arange(N)])
    by_hand = F.cross_entropy(logits[:N], partner[:N]) + F.cross_entropy(logits[N:], partner[N:])
    torch.testing.assert_close(out.loss, by_hand)
    assert out.metrics["candidates"] == candidates == 2 * N


# ---------------------------------------------------------------- MoCo


def _moco(**config):
    return _build(MoCo, **{"head": (64, 32), "queue_size": 32, "bn_splits": 2, **config}).train()


def _perturb_online(method):
    """The encoders are copies at construction; move the online one so an EMA is visible."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*method.backbone.parameters(), *method.head.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def _key_encoder_copy(method):
    return copy.deepcopy(method.key_encoder["backbone"]), copy.deepcopy(method.key_encoder["head"])


def _key_parameters(method):
    return [*method.key_encoder["backbone"].parameters(), *method.key_encoder["head"].parameters()]


def _keys(backbone, head, x):
    return F.normalize(head(backbone(x)), dim=1)


def test_moco_ema_updates_parameters_not_bn_buffers():
    # key_bn="sync" in one process: plain BN and no shuffle, so the key encoder's forward is easy
    # to replay on a copy.
    method = _moco(key_bn="sync")
    _perturb_online(method)
    m = 0.9
    online = [p.detach().clone() for p in [*method.backbone.parameters(), *method.head.parameters()]]
    old = [p.detach().clone() for p in _key_parameters(method)]
    online_buffers = {k: v.clone() for k, v in method.backbone.named_buffers()}
    old_buffers = {k: v.clone() for k, v in method.key_encoder["backbone"].named_buffers()}
    replay_backbone, replay_head = _key_encoder_copy(method)
    views = _views()
    with torch.no_grad():
        method(_batch(views), _momentum(m))

    new = _key_parameters(method)
    for after, before, q in zip(new, old, online):
        torch.testing.assert_close(after, m * before + (1 - m) * q)

    # The key encoder's BN buffers: what its own forward (with the EMA'd weights) gives ...
    with torch.no_grad():
        for p, q in zip([*replay_backbone.parameters(), *replay_head.parameters()], new):
            p.copy_(q)
        keys = _keys(replay_backbone, replay_head, views[1])
    for name, buffer in method.key_encoder["backbone"].named_buffers():
        torch.testing.assert_close(buffer, dict(replay_backbone.named_buffers())[name])
    # ... and not the EMA of the online encoder's.
    name = "bn1.running_mean"
    ema = m * old_buffers[name] + (1 - m) * online_buffers[name]
    assert not torch.allclose(dict(method.key_encoder["backbone"].named_buffers())[name], ema, atol=1e-4)
    # The N new keys are at the queue's start.
    torch.testing.assert_close(method.queue.rows[:N], keys)


def test_moco_queue_receives_the_keys_at_its_position_and_wraps():
    method = _moco(queue_size=2 * N)
    assert int(method.queue.position) == 0
    for i, start in enumerate([0, N, 0, N]):
        before = method.queue.rows.clone()
        with torch.no_grad():
            out = method(_batch(_views(seed=10 + i)), _momentum(0.99, index=i))
        assert out.metrics["enqueued"] == N
        assert int(method.queue.position) == (start + N) % (2 * N)
        changed = (method.queue.rows != before).any(dim=1)
        assert changed[start:start + N].all() and not changed[:start].any() and not changed[start + N:].any()
        torch.testing.assert_close(method.queue.rows.norm(dim=1), torch.ones(2 * N))


def test_moco_split_mode_keys_are_shuffled_within_the_batch():
    """With one process, the official CIFAR demo shuffles the keys within the batch (on top of
    SplitBatchNorm), so a key's BN sub-batch holds other images than its query's."""
    method = _moco()
    step = _momentum(1.0, index=7, seed=3)
    replay_backbone, replay_head = _key_encoder_copy(method)
    views = _views()
    with torch.no_grad():
        method(_batch(views), step)
        # The permutation drawn from (seed, index), as in MoCo._shuffle.
        order = torch.randperm(N, generator=torch.Generator().manual_seed(step.seed * 1_000_003 + step.index))
        unshuffled = _keys(copy.deepcopy(replay_backbone), copy.deepcopy(replay_head), views[1])
        shuffled = _keys(replay_backbone, replay_head, views[1][order])[torch.argsort(order)]
    torch.testing.assert_close(method.queue.rows[:N], shuffled)
    assert not torch.allclose(method.queue.rows[:N], unshuffled, atol=1e-4)


def test_moco_config_errors():
    with pytest.raises(ValueError, match=r"method\.queue_size"):
        _moco(queue_size=20)
    with pytest.raises(ValueError, match=r"bn_splits"):
        _moco(key_bn="auto", bn_splits=3)
    with pytest.raises(ValueError, match=r"shuffle"):
        _moco(key_bn="shuffle")


def test_moco_auto_key_bn_in_one_process_is_split_bn_in_both_encoders():
    method = _moco(key_bn="auto")
    assert method.key_bn == "split"
    for encoder in (method.backbone, method.key_encoder["backbone"]):
        norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(norms) == 20 and all(isinstance(m, SplitBatchNorm2d) and m.splits == 2 for m in norms)


def test_moco_loss_does_not_reach_the_momentum_encoder_nor_the_queue():
    method = _moco()
    out = method(_batch(_views()), _momentum(0.99))
    queue, position = method.queue.rows.clone(), method.queue.position.clone()
    out.loss.backward()
    momentum = _key_parameters(method)
    assert all(not p.requires_grad and p.grad is None for p in momentum)
    assert all(p.grad is not None for p in [*method.backbone.parameters(), *method.head.parameters()])
    assert torch.equal(method.queue.rows, queue) and torch.equal(method.queue.position, position)


# ---------------------------------------------------------------- SplitBatchNorm2d


def _split_bn(splits=2, channels=4):
    generator = torch.Generator().manual_seed(0)
    bn = SplitBatchNorm2d(channels, splits)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.5 * torch.randn(channels, generator=generator))
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(1 + torch.rand(channels, generator=generator))
    return bn


def _plain_copy(bn):
    plain = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum)
    plain.load_state_dict(bn.state_dict())
    return plain


def test_split_batchnorm_training_is_a_plain_bn_per_split():
    splits = 3
    bn = _split_bn(splits).train()
    x = 2 + 3 * torch.randn(12, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    references = [_plain_copy(bn).train() for _ in range(splits)]
    expected = torch.empty_like(x)
    for s, reference in enumerate(references):   # split s: the samples n with n % splits == s
        expected[s::splits] = reference(x[s::splits])
    out = bn(x)
    torch.testing.assert_close(out, expected)
    for name in ("running_mean", "running_var"):
        mean_over_splits = torch.stack([getattr(r, name) for r in references]).mean(0)
        torch.testing.assert_close(getattr(bn, name), mean_over_splits)
    assert int(bn.num_batches_tracked) == 1
    out.sum().backward()
    assert bn.weight.grad is not None and bn.bias.grad is not None


def test_split_batchnorm_eval_is_plain_bn_and_state_dict_is_batchnorm2d():
    bn = _split_bn().eval()
    x = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(bn(x), _plain_copy(bn).eval()(x))
    assert list(bn.state_dict()) == list(nn.BatchNorm2d(4).state_dict())


def test_split_batchnorm_rejects_an_indivisible_batch():
    with pytest.raises(ValueError, match="splits"):
        _split_bn(splits=4).train()(torch.randn(6, 4, 2, 2))


def test_split_batchnorm_without_affine_and_its_refusals():
    x = torch.randn(8, 3, 4, 4)
    bn = SplitBatchNorm2d(3, 2, affine=False)
    reference = torch.cat([F.batch_norm(x[s::2], None, None, training=True) for s in range(2)])
    order = torch.arange(8).view(4, 2).T.reshape(-1)  # x[0::2] then x[1::2]
    torch.testing.assert_close(bn(x)[order], reference)
    for settings in ({"momentum": None}, {"track_running_stats": False}):
        with pytest.raises(ValueError, match="running statistics with a momentum"):
            SplitBatchNorm2d(3, 2, **settings)


def test_split_batchnorm_conversion_keeps_the_state():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    state = copy.deepcopy(model.state_dict())
    split_batchnorm(model, 2)
    assert isinstance(model[1], SplitBatchNorm2d) and isinstance(model[2][0], SplitBatchNorm2d)
    assert model.state_dict().keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value)


# ---------------------------------------------------------------- SwAV


def _swav(**config):
    return _build(SwAV, **{"prototypes": 20, "projector": (64, 32), **config}).train()


def test_swav_prototypes_are_unit_norm_after_a_forward():
    method = _swav()
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
        method(_batch(_views(sizes=[8, 8, 4])), Step())
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(20))


def test_swav_freezes_the_prototypes_for_the_first_steps():
    method = _swav(freeze_prototypes_steps=3)
    for index, frozen in [(0, True), (2, True), (3, False), (10, False)]:
        for p in method.parameters():
            p.grad = torch.ones_like(p)
        method.before_optimizer_step(Step(index=index))
        assert (method.prototypes.weight.grad is None) == frozen
        assert method.projector[0].weight.grad is not None   # only the prototypes lose theirs


def test_swav_runs_with_just_the_two_global_crops():  # 2 x 224, the SimSiam paper's Table 4 baseline
    with torch.no_grad():
        out = _swav()(_batch(_views(count=2)), Step())
    assert torch.isfinite(out.loss)


def test_swav_multicrop_and_encode_by_size():
    method = _swav()
    views = _views(sizes=[32, 32, 16, 16, 16, 16], n=4)   # 4 images: 32 px is the costly size
    with torch.no_grad():
        out = method(_batch(views), Step())
    _check_output(out, 32)

    method.eval()   # per-sample features: batching cannot change them
    calls = []
    hook = method.backbone.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    with torch.no_grad():
        grouped = torch.cat(encode_groups(method.backbone, _batch(views)))
        hook.remove()
        separate = torch.cat([method.backbone(v) for v in views])
    assert calls == [2 * 4, 4 * 4]   # one call per size group
    assert grouped.shape == (6 * 4, 512)
    torch.testing.assert_close(grouped, separate, rtol=1e-4, atol=1e-5)


def _swav_embeddings(method, views):
    """(z, scores) of a train-mode forward, replayed by hand (BN uses batch statistics)."""
    z = F.normalize(method.projector(torch.cat(encode_groups(method.backbone, _batch(views)))), dim=1)
    return z, method.prototypes(z)


def _queue(method, crop):
    """The rows of a crop's queue, newest push first (its storage is circular)."""
    queue = method.queues[crop]
    return queue.rows.roll(-queue._position, 0).flip(0).view(-1, N, queue.rows.shape[1]).flip(1).reshape(
        queue.rows.shape)


def test_swav_queue_fills_newest_first_then_feeds_the_codes():
    method = _swav(queue_length=2 * N, queue_start_epoch=1)
    batches = [_views(sizes=[8, 8, 4], seed=20 + i) for i in range(3)]
    with torch.no_grad():
        method(_batch(batches[0]), Step(epoch=0))      # before queue_start_epoch: the queue stays empty
        assert not any(q.rows.any() or q.full for q in method.queues)
        embeddings = []
        for views in batches[:2]:
            method(_batch(views), Step(epoch=1))
            embeddings.append(_swav_embeddings(method, views)[0])
            for crop in range(2):   # the newest rows hold the newest embeddings of that crop
                torch.testing.assert_close(_queue(method, crop)[:N], embeddings[-1][crop * N:(crop + 1) * N])
        assert all(q.full for q in method.queues)   # but it was not before the second batch filled it
        for crop in range(2):
            torch.testing.assert_close(_queue(method, crop)[N:], embeddings[0][crop * N:(crop + 1) * N])

        queue = [q.rows.clone() for q in method.queues]
        without_queue = copy.deepcopy(method)
        for q in without_queue.queues:    # an empty queue is not used: codes from the batch alone
            q.rows.zero_()
            q.filled.zero_()
            q.position.zero_()
            q.state_loaded()
        step = Step(epoch=1)
        out = method(_batch(batches[2]), step)
        z, scores = _swav_embeddings(method, batches[2])
        codes = [sinkhorn(torch.cat([queue[c] @ method.prototypes.weight.t(), scores[c * N:(c + 1) * N]]),
                          0.05, 3)[-N:] for c in range(2)]
        torch.testing.assert_close(out.loss, swapped_prediction(scores.split(N), codes, 0.1))
        plain = without_queue(_batch(batches[2]), step).loss
    assert abs(out.loss.item() - plain.item()) > 1e-4


def test_swav_queue_length_must_be_a_multiple_of_the_global_batch():
    with pytest.raises(ValueError, match=r"method\.queue_length"):
        _swav(queue_length=20)


def test_swav_rank_state_round_trip():
    method = _swav(queue_length=2 * N, queue_start_epoch=0)
    with torch.no_grad():
        for i in range(2):
            method(_batch(_views(sizes=[8, 8, 4], seed=30 + i)), Step())
    buffer = io.BytesIO()
    torch.save(method.rank_state_dict(), buffer)
    buffer.seek(0)
    other = _swav(queue_length=2 * N, queue_start_epoch=0)
    other.load_rank_state_dict(torch.load(buffer, weights_only=True))
    for mine, theirs in zip(method.queues, other.queues):
        assert torch.equal(theirs.rows, mine.rows) and mine.rows.any()
        assert theirs.full == mine.full and theirs._position == mine._position
    assert other.rank_state_dict().keys() == {"queues.0", "queues.1"}
    assert not any(key.startswith("queues.") for key in method.state_dict())  # per rank, not in the model's


# ---------------------------------------------------------------- SimSiam


def _simsiam(**config):
    return _build(SimSiam, **{"projector": (64, 64), "predictor_hidden": 16, **config}).train()


def test_simsiam_loss_is_the_symmetric_negative_cosine():
    method = _simsiam()
    views = _views()
    with torch.no_grad():
        out = method(_batch(views), Step())
        z1, z2 = (method.projector(method.backbone(v)) for v in views)   # one BN batch per view
        p1, p2 = method.predictor(z1), method.predictor(z2)
    expected = -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())
    torch.testing.assert_close(out.loss, expected)
    assert -1.0 <= out.loss.item() <= 1.0


def _simsiam_gradient(method, views, loss_fn):
    """Gradient of `loss_fn` w.r.t. the backbone's outputs, made leaves by a hook so that no
    backward runs through the ResNet."""
    features = []

    def leaf(module, args, output):
        features.append(output.detach().requires_grad_())
        return features[-1]

    hook = method.backbone.register_forward_hook(leaf)
    try:
        loss = loss_fn(views)
    finally:
        hook.remove()
    return torch.autograd.grad(loss, features)


def test_simsiam_target_branch_gets_no_gradient():
    method = _simsiam()
    views = _views()

    def by_hand(detach):
        def loss(views):
            z1, z2 = (method.projector(method.backbone(v)) for v in views)
            p1, p2 = method.predictor(z1), method.predictor(z2)
            t1, t2 = (z1.detach(), z2.detach()) if detach else (z1, z2)
            return -0.5 * (F.cosine_similarity(p1, t2).mean() + F.cosine_similarity(p2, t1).mean())
        return loss

    actual = _simsiam_gradient(method, views, lambda v: method(_batch(v), Step()).loss)
    stopped = _simsiam_gradient(method, views, by_hand(detach=True))
    through = _simsiam_gradient(method, views, by_hand(detach=False))
    for a, s, t in zip(actual, stopped, through):
        torch.testing.assert_close(a, s)
        assert not torch.allclose(a, t, atol=1e-6)   # the check can tell the two apart


def test_simsiam_fixed_predictor_lr_and_heads():
    method = _simsiam()
    assert method.fixed_lr_prefixes == ("predictor.",)
    assert _simsiam(fixed_predictor_lr=False).fixed_lr_prefixes == ()
    last = method.projector[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine and last.num_features == 64
    groups = param_groups(method, weight_decay=1e-4, exclude_bias_and_norm=False,
                          fixed_lr_prefixes=method.fixed_lr_prefixes)
    fixed = [name for g in groups if g["fixed_lr"] for name in g["names"]]
    assert fixed and fixed == [name for name, _ in method.named_parameters() if name.startswith("predictor.")]


# ---------------------------------------------------------------- the collapse monitor


def test_embedding_std_is_one_over_sqrt_d_when_healthy_and_zero_when_collapsed():
    generator = torch.Generator().manual_seed(0)
    healthy = torch.randn(8192, 64, generator=generator)
    assert embedding_std(healthy).item() == pytest.approx(64 ** -0.5, rel=0.02)
    collapsed = torch.randn(1, 64, generator=generator).expand(8192, 64)
    assert embedding_std(collapsed).item() < 1e-6
    # The norm does not matter: the embeddings are l2-normalized first.
    assert embedding_std(5 * healthy).item() == pytest.approx(embedding_std(healthy).item())
    metrics = health_metrics(healthy.half())
    assert metrics["embedding_std"].dtype == torch.float32
    assert metrics["embedding_std_ref"] == pytest.approx(0.125)
