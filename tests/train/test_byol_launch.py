"""BYOL and the truncated triplet in two processes (`accelerate launch`, gloo) under
`model.sync_bn`: after 2 steps both ranks hold the same online and target weights, and the same
backbone BN statistics in both networks (GlobalBatchNorm2d over the global batch; the triplet's
per-step input sizes must then be the same on every rank)."""

import json

import pytest
import torch
from test_launch import HERE, RECIPES, launch

HEADS = {"byol": ["method.projector=[64, 32]", "method.predictor_hidden=64"],
         "triplet": ["method.projector=[64, 32]", "method.predictor_hidden=64", "method.negatives_to=5"]}


@pytest.mark.parametrize("method", ["byol", "triplet"])
def test_ranks_keep_identical_online_and_target_weights_under_sync_bn(photo_shards, tmp_path, method):
    launch(HERE / "rank_probe.py", tmp_path, RECIPES / f"{method}_small.yaml", f"data.train={photo_shards}",
           "data.batch_size=16", f"train.out={tmp_path}", "train.max_steps=2", "train.log_every=1",
           "data.num_threads=1", "model.sync_bn=true", *HEADS[method], cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    seen = [{k for batch in r["keys"] for k in batch} for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # each rank its own images
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
