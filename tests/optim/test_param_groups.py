"""Parameter groups: where each parameter lands; schedules keep fixed learning rates."""

import pytest
import torch
from torch import nn

from sslpipe.optim.lars import LARS
from sslpipe.optim.param_groups import apply_schedule, param_groups

KEYS = {"params", "names", "weight_decay", "lars_exclude", "fixed_lr"}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.predictor = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _summary(groups):
    return [(g["names"], g["weight_decay"], g["lars_exclude"], g["fixed_lr"]) for g in groups]


def test_groups_with_exclusion_and_fixed_predictor():
    model = Net()
    groups = param_groups(model, weight_decay=1e-6, exclude_bias_and_norm=True,
                          fixed_lr_prefixes=("predictor",))
    assert all(set(g) == KEYS for g in groups)
    assert _summary(groups) == [
        (["conv.weight", "fc.weight"], 1e-6, False, False),
        (["bn.weight", "bn.bias", "fc.bias"], 0.0, True, False),
        (["predictor.0.weight", "predictor.3.weight"], 1e-6, False, True),
        (["predictor.0.bias", "predictor.1.weight", "predictor.1.bias", "predictor.3.bias"], 0.0, True, True),
    ]
    named = dict(model.named_parameters())
    for g in groups:
        assert len(g["params"]) == len(g["names"])
        assert all(p is named[n] for p, n in zip(g["params"], g["names"]))


def test_no_exclusion_one_group_in_module_order_without_frozen_params():
    model = Net()
    groups = param_groups(model, weight_decay=1e-4, exclude_bias_and_norm=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert _summary(groups) == [(trainable, 1e-4, False, False)]
    assert not any(n.startswith("frozen") for n in trainable)


def test_no_empty_groups_and_deterministic():
    groups = param_groups(Net(), weight_decay=1e-6, exclude_bias_and_norm=True)
    assert [(g["lars_exclude"], g["fixed_lr"]) for g in groups] == [(False, False), (True, False)]
    assert all(g["params"] for g in groups)
    assert _summary(groups) == _summary(param_groups(Net(), weight_decay=1e-6, exclude_bias_and_norm=True))
    # SimSiam: wd on everything, only the predictor's lr fixed
    simsiam = param_groups(Net(), weight_decay=1e-4, exclude_bias_and_norm=False,
                           fixed_lr_prefixes="predictor")
    assert [(g["weight_decay"], g["lars_exclude"], g["fixed_lr"]) for g in simsiam] == [
        (1e-4, False, False), (1e-4, False, True)]
    assert all(n.startswith("predictor.") for n in simsiam[1]["names"])


def test_groups_accepted_by_torch_sgd_and_lars():
    model = Net()
    groups = param_groups(model, weight_decay=1e-6, exclude_bias_and_norm=True,
                          fixed_lr_prefixes=("predictor",))
    lars = LARS(groups, lr=0.1)
    assert [g["lars_exclude"] for g in lars.param_groups] == [False, True, False, True]
    sgd = torch.optim.SGD(param_groups(model, weight_decay=1e-4, exclude_bias_and_norm=False), lr=0.1,
                          momentum=0.9)
    assert sgd.param_groups[0]["weight_decay"] == 1e-4


def test_apply_schedule_keeps_fixed_lr_groups_and_excluded_weight_decay():
    model = Net()
    opt = LARS(param_groups(model, weight_decay=1e-6, exclude_bias_and_norm=True,
                            fixed_lr_prefixes=("predictor",)), lr=0.05)
    for lr, wd in [(0.0, 1e-5), (0.7, None), (0.3, 2e-5)]:
        apply_schedule(opt, lr, wd)
        for g in opt.param_groups:
            assert g["lr"] == (0.05 if g["fixed_lr"] else lr)
            assert g["initial_lr"] == 0.05
    assert [g["weight_decay"] for g in opt.param_groups] == [2e-5, 0.0, 2e-5, 0.0]


def test_apply_schedule_respects_existing_initial_lr():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([{"params": [w], "fixed_lr": True, "initial_lr": 0.5}], lr=0.1)
    apply_schedule(opt, 0.01)
    assert opt.param_groups[0]["lr"] == 0.5


def test_negative_weight_decay_rejected():
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(Net(), weight_decay=-1.0, exclude_bias_and_norm=True)
