"""The parts methods compose: momentum encoder, feature queue, memory bank, and where their state
lives (replicated in the model's state dict, or per rank); against their reference formulas."""

import copy
import math

import pytest
import torch
from torch import nn

from sslpipe.methods.base import Method
from sslpipe.methods.parts import FeatureQueue, MemoryBank, MomentumEncoder


def _online():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)), nn.Linear(6, 3)


def test_momentum_encoder_is_an_ema_of_parameters_only():
    backbone, head = _online()
    target = MomentumEncoder(backbone=backbone, head=head)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in [*backbone.parameters(), *head.parameters()]:
            p.add_(1.0)
        backbone[1].running_mean.fill_(7.0)  # the online BN's statistics: not the target's business
    before = [p.clone() for p in target.parameters()]
    buffers = {k: v.clone() for k, v in target.named_buffers()}
    target.update(0.9)
    for old, new, online in zip(before, target.parameters(), [*backbone.parameters(), *head.parameters()]):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
    for name, value in target.named_buffers():
        assert torch.equal(value, buffers[name]), name
    x = torch.randn(5, 4)
    target.eval()
    torch.testing.assert_close(target(x), target["head"](target["backbone"](x)))
    assert not target(x).requires_grad
    assert list(dict(target.named_children())) == ["copies"]  # the online modules are not owned


def test_a_queue_is_first_in_first_out_and_wraps():
    queue = FeatureQueue(6, 2)
    assert not queue.full and queue.rows.abs().sum() == 0
    pushed = [torch.full((4, 2), float(i + 1)) for i in range(3)]
    queue.push(pushed[0])
    assert not queue.full and int(queue.position) == 4 and int(queue.filled) == 4
    queue.push(pushed[1])  # wraps: rows 4, 5 then 0, 1
    assert queue.full and int(queue.position) == 2
    assert queue.rows[:, 0].tolist() == [2, 2, 1, 1, 2, 2]
    queue.push(pushed[2][:2])
    assert queue.rows[:, 0].tolist() == [2, 2, 3, 3, 2, 2] and int(queue.position) == 4
    with pytest.raises(ValueError, match="cannot push 7 rows"):
        queue.push(torch.zeros(7, 2))


def test_queue_state_lives_where_its_placement_says_and_reloads_its_host_mirror():
    class Holder(Method):
        def __init__(self):
            super().__init__(nn.Linear(2, 2))
            self.shared = FeatureQueue(4, 2)
            self.own = FeatureQueue(4, 2, per_rank=True)

    holder = Holder()
    holder.shared.push(torch.ones(3, 2))
    holder.own.push(torch.ones(2, 2))
    state = holder.state_dict()
    assert {"shared.rows", "shared.position", "shared.filled"} <= set(state)
    assert not any(key.startswith("own.") for key in state)  # per rank: not in the model's state
    rank_state = holder.rank_state_dict()
    assert set(rank_state) == {"own"} and rank_state["own"]["position"] == 2
    assert sorted(holder.unsynced_buffers()) == sorted(
        f"{part}.{name}" for part in ("shared", "own") for name in ("rows", "position", "filled")
    )

    other = Holder()
    other.load_state_dict(state)
    other.load_rank_state_dict(rank_state)
    assert (other.shared._position, other.shared._filled) == (3, 3)  # the host mirrors follow the load
    assert (other.own._position, other.own._filled) == (2, 2)
    with pytest.raises(ValueError, match="holds"):
        other.load_rank_state_dict({})
    with pytest.raises(ValueError, match="shape"):
        FeatureQueue(8, 2, per_rank=True).load_rank_state_dict(rank_state["own"])


def test_memory_bank_init_read_and_update_follow_instdisc():
    bank = MemoryBank(50, 16, generator=torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(16 / 3)  # lemniscate.pytorch: stdv = 1 / sqrt(inputSize / 3)
    assert (
        bank.rows.shape == (50, 16) and bank.rows.abs().max() <= bound and bank.rows.abs().max() > 0.9 * bound
    )
    index = torch.tensor([3, 17, 42])
    features = torch.randn(3, 16)
    before = bank.rows.clone()
    read = bank(index)
    assert torch.equal(read, before[index]) and not read.requires_grad
    bank.update(index, features, momentum=0.5)
    # lemniscate: w = m * memory[y] + (1 - m) * x; memory[y] = w / ||w||
    expected = 0.5 * before[index] + 0.5 * features
    expected = expected / expected.pow(2).sum(1, keepdim=True).pow(0.5)
    torch.testing.assert_close(bank.rows[index], expected)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(bank.rows[untouched], before[untouched])
    torch.testing.assert_close(bank.rows[index].norm(dim=1), torch.ones(3))
    assert "rows" in bank.state_dict() and MemoryBank(5, 2, per_rank=True).state_dict() == {}
    with pytest.raises(ValueError, match="2 indices for 3 feature rows"):
        bank.update(index[:2], features, 0.5)


def test_a_deep_copied_method_s_momentum_encoder_follows_the_copy_s_online_modules():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = _online()
            self.target = MomentumEncoder(backbone=self.backbone, head=self.head)

    holder = Holder()
    twin = copy.deepcopy(holder)
    with torch.no_grad():
        twin.head.weight.fill_(3.0)
    twin.target.update(0.0)
    assert torch.equal(twin.target["head"].weight, twin.head.weight)
    assert not torch.equal(holder.target["head"].weight, twin.head.weight)


def test_a_per_rank_state_without_one_of_its_buffers_is_refused():
    queue = FeatureQueue(4, 2, per_rank=True)
    state = queue.rank_state_dict()
    del state["filled"]
    with pytest.raises(ValueError, match="the saved per-process state lacks filled"):
        FeatureQueue(4, 2, per_rank=True).load_rank_state_dict(state)
