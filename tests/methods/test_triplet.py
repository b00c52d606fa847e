"""The truncated triplet method on a small ResNet-18 and tiny batches: the per-step input sizes
(from the step's seed, in range, different per branch and step, no host sync), the resize, the
loss against a replay with `triplet_loss`, the variants' ranks, BYOL's EMA and stop-gradient kept,
config refusals, one SGD step."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslpipe import seeds
from sslpipe.counting import DispatchCounter
from sslpipe.losses import triplet_loss
from sslpipe.methods import BYOL, Step, Triplet
from sslpipe.models import resnet18
from sslpipe.optim.param_groups import param_groups
from sslpipe.pipeline.batch import Batch
from sslpipe.train.config import load_config

N = 12  # 11 negatives per image: ranks 2..10 fit
ROOT = __import__("pathlib").Path(__file__).parents[2]
SIZES = {"online_sizes": (6, 16), "target_sizes": (9, 16)}


def _triplet(seed=0, global_batch=N, **config):
    torch.manual_seed(seed)
    config = {"projector": (32, 16), "predictor_hidden": 32, **SIZES, **config}
    return Triplet(resnet18(small_images=True), Triplet.Config(**config), global_batch=global_batch).train()


def _batch(seed=0, size=16):
    generator = torch.Generator().manual_seed(seed)
    return Batch.from_views([torch.randn(N, 3, size, size, generator=generator) for _ in range(2)],
                            names=["view1", "view2"])


def _step(m=0.99, **kwargs):
    return Step(values={"ema_momentum": m}, **kwargs)


def test_sizes_follow_the_step_seed_and_stay_in_range():
    method = _triplet()
    drawn = []
    for index in range(40):
        step = Step(index=index, seed=5)
        online, target = method.sizes(step)
        rng = np.random.default_rng(seeds.derive(5, index, "triplet_resize"))
        assert online == list(rng.integers(6, 17, size=2)) and target == list(rng.integers(9, 17, size=2))
        assert all(isinstance(s, int) for s in online + target)
        assert all(6 <= s <= 16 for s in online) and all(9 <= s <= 16 for s in target)
        assert method.sizes(Step(index=index, seed=5, rank=3)) == (online, target)  # one shape on every rank
        drawn.append((tuple(online), tuple(target)))
    assert len(set(drawn)) > 30                                      # steps differ
    assert any(o != t for o, t in drawn)                             # branches differ
    assert any(o[0] != o[1] for o, _ in drawn)                       # the two views too
    assert {s for o, _ in drawn for s in o} == set(range(6, 17))     # both ends reached
    assert min(s for _, t in drawn for s in t) == 9
    assert method.sizes(Step(index=3, seed=6)) != method.sizes(Step(index=3, seed=5))


def test_each_branch_sees_its_views_resized_bilinearly():
    method = _triplet()
    seen = {"online": [], "target": []}
    method.backbone.register_forward_pre_hook(lambda m, a: seen["online"].append(a[0].clone()))
    method.target["backbone"].register_forward_pre_hook(lambda m, a: seen["target"].append(a[0].clone()))
    batch, step = _batch(), _step(index=4, seed=1)
    with torch.no_grad():
        method(batch, step)
    online, target = method.sizes(step)
    for branch, sizes in (("online", online), ("target", target)):
        for x, view, s in zip(seen[branch], batch.views, sizes):
            assert x.shape == (N, 3, s, s)
            expected = view if s == 16 else F.interpolate(view, size=(s, s), mode="bilinear",
                                                          align_corners=False)
            torch.testing.assert_close(x, expected)


def test_loss_is_the_triplet_head_of_both_directions_added():
    method = _triplet()
    batch, step = _batch(), _step(index=2)
    before = copy.deepcopy(method)
    with torch.no_grad():
        out = method(batch, step)
        online, target = before.branch_inputs(batch, step)
        z = [before.projector(before.backbone(x)) for x in online]
        p = [before.predictor(zi) for zi in z]
        t = [before.target(x) for x in target]
    first = triplet_loss(p[0], t[1], (2, 10), 2.0, 100.0)
    second = triplet_loss(p[1], t[0], (2, 10), 2.0, 100.0)
    torch.testing.assert_close(out.loss, first[0] + second[0])
    torch.testing.assert_close(out.metrics["d_ap"], 0.5 * (first[1].mean() + second[1].mean()))
    torch.testing.assert_close(out.metrics["d_an"], 0.5 * (first[2].mean() + second[2].mean()))
    assert 190 < out.loss.item() < 210  # 2 x (100 + 2 d_ap - d_an), distances in [-2, 2]


@pytest.mark.parametrize("config, ranks", [
    ({}, (2, 10)), ({"negatives_from": 1, "negatives_to": 5}, (1, 5)),
    ({"variant": "rank_k", "k": 3}, (3, 3)),
    ({"variant": "smoothed_rank_k", "k": 6, "smoothing": 4}, (2, 10)),
    ({"variant": "smoothed_rank_k", "k": 3, "smoothing": 1}, (2, 4)), ({"variant": "median"}, (6, 6))])
def test_variants_choose_their_negative_ranks(config, ranks):
    assert Triplet.Config(**config).ranks(N) == ranks


def test_median_variant_is_torch_median_of_the_negatives():
    # The official head's commented-out line: dist[i][mask[i] == 0].median().
    generator = torch.Generator().manual_seed(0)
    p, t = torch.randn(N, 5, generator=generator), torch.randn(N, 5, generator=generator)
    _, _, d_an = triplet_loss(p, t, Triplet.Config(variant="median").ranks(N))
    dist = -2.0 * F.normalize(p, dim=1) @ F.normalize(t, dim=1).t()
    for i in range(N):
        torch.testing.assert_close(d_an[i], torch.cat([dist[i, :i], dist[i, i + 1:]]).median())


def test_byol_s_target_rules_hold():
    method = _triplet()
    assert isinstance(method, BYOL) and set(method.target.copies) == {"backbone", "projector"}
    assert method.projector[-1].bias is not None  # the official neck has output biases
    out = method(_batch(), _step())
    out.loss.backward()
    target = list(method.target.parameters())
    assert all(not p.requires_grad and p.grad is None for p in target)
    assert all(p.grad is not None for p in method.predictor.parameters())
    before = [p.clone() for p in target]
    online = [p.detach().clone() for p in [*method.backbone.parameters(), *method.projector.parameters()]]
    method.after_optimizer_step(_step(0.9))
    for after, old, q in zip(target, before, online):
        torch.testing.assert_close(after, 0.9 * old + 0.1 * q)
    tau = method.schedules(5)["ema_momentum"]
    assert tau[0] == pytest.approx(0.99) and tau[-1] == 1.0


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    method = _triplet()
    batch, step = _batch(), _step(1.0, index=1)  # the same step: the same sizes in both evaluations
    out = method(batch, step)
    optimizer = torch.optim.SGD(param_groups(method, weight_decay=0.0, exclude_bias_and_norm=True), lr=0.001)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    method.after_optimizer_step(step)
    with torch.no_grad():
        after = method(batch, step).loss
    assert after.item() < out.loss.item() - 1e-4


def test_a_step_syncs_nothing_with_the_host():
    method = _triplet()
    batch = _batch()
    with DispatchCounter(roots=[method, *batch.views]) as counter:
        out = method(batch, _step(index=7))
        out.loss.backward()
        method.after_optimizer_step(_step())
    assert counter.sync_count == 0, dict(counter.syncs)


def test_config_refusals():
    with pytest.raises(ValueError, match=r"rank 10 \(method.negatives_to\).*batch of 8 per process"):
        _triplet(global_batch=8)
    with pytest.raises(ValueError, match=r"method.k\b"):
        _triplet(variant="rank_k", k=12)
    _triplet(global_batch=8, negatives_to=7)  # 7 negatives: enough
    for bad, match in [({"negatives_from": 3, "negatives_to": 2}, "negatives_from"),
                       ({"negatives_from": 0}, "negatives_from"), ({"k": 0}, "k must be"),
                       ({"smoothing": -1}, "smoothing"),
                       ({"variant": "smoothed_rank_k", "k": 2}, "smoothing"),
                       ({"online_sizes": (0, 8)}, "online_sizes"), ({"target_sizes": (9, 8)}, "target_sizes"),
                       ({"gamma": -1.0}, "gamma"), ({"momentum": 2.0}, "momentum")]:
        with pytest.raises(ValueError, match=match):
            Triplet.Config(**bad)


def test_the_recipes_carry_the_official_settings():
    c = load_config(ROOT / "recipes" / "triplet_r50_imagenet.yaml")
    m = c.method
    assert (m.momentum, m.variant, m.negatives_from, m.negatives_to, m.gamma, m.margin) == \
        (0.99, "truncated", 2, 10, 2.0, 100.0)
    assert (m.online_sizes, m.target_sizes) == ((96, 224), (128, 224))
    assert (m.projector, m.last_bias) == ((4096, 256), True)
    assert (c.optim.name, c.optim.weight_decay, c.optim.warmup_epochs) == ("lars", 1e-6, 10)
    assert c.optim.lr * c.data.batch_size / 256 == pytest.approx(4.8)  # the official absolute rate
    assert c.optim.exclude_bias_and_norm and c.model.sync_bn
    small = load_config(ROOT / "recipes" / "triplet_small.yaml").method
    assert (small.online_sizes, small.target_sizes) == ((28, 64), (36, 64))
