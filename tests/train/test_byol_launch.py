"""BYOL and the truncated triplet in two processes (`accelerate launch`, gloo) under
`model.sync_bn`: after 2 steps both ranks hold the same online and target weights, and the same
backbone BN statistics in both networks (GlobalBatchNorm2d over the global batch; the triplet's
per-step input sizes must then be the same on every rank)."""

import json

import pytest
import torch
from test_launch import probe


@pytest.mark.parametrize("method", ["byol", "triplet"])
def test_ranks_keep_identical_online_and_target_weights_under_sync_bn(photo_shards, tmp_path, method):
    ranks = probe(method, photo_shards, tmp_path, "model.sync_bn=true")
    parameters = [r["parameters"] for r in ranks]
    assert any(name.startswith("target.") for name in parameters[0])
    for name, value in parameters[0].items():
        assert torch.equal(value, parameters[1][name]), name
    # The target moved by EMA: it is no longer the online network's copy.
    weights = parameters[0]
    assert not torch.equal(weights["backbone.conv1.weight"], weights["target.copies.backbone.conv1.weight"])
    # Backbone BN statistics from the global batch: equal on both ranks, in both networks.
    buffers = [r["buffers"] for r in ranks]
    backbone = [n for n in buffers[0]
                if n.startswith(("backbone.", "target.copies.backbone.")) and "running" in n]
    assert len(backbone) == 2 * 2 * 20  # mean and var of ResNet-18's 20 BNs, online and target
    for name in backbone:
        torch.testing.assert_close(buffers[0][name], buffers[1][name], rtol=1e-5, atol=1e-6, msg=name)
    run_dir = tmp_path / f"{method}_small"
    assert "sync_bn: true" in (run_dir / "config.yaml").read_text()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("ema_momentum" in r for r in rows)
