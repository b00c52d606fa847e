"""MoCo v3 and InvaSpread under `accelerate launch --multi_gpu --num_processes 2` (gloo, CPU),
with `model.sync_bn=true`: the candidates span both processes' batches and both processes end
with identical weights, the momentum encoder's included (see test_launch.py, rank_probe.py)."""

import json

import pytest
import torch
from test_launch import probe


@pytest.mark.parametrize("method", ["mocov3", "invaspread"])
def test_two_processes_sync_bn_identical_weights_and_global_candidates(photo_shards, tmp_path, method):
    ranks = probe(method, photo_shards, tmp_path, "model.sync_bn=true")
    parameters = [r["parameters"] for r in ranks]
    for name, value in parameters[0].items():
        assert torch.equal(value, parameters[1][name]), name
    # The backbones' BN statistics are the global batch's (GlobalBatchNorm2d): the same everywhere.
    for name, value in ranks[0]["buffers"].items():
        if name.startswith(("backbone.", "momentum_encoder.copies.backbone.")):
            assert torch.equal(value, ranks[1]["buffers"][name]), name
    rows = [json.loads(x) for x in (tmp_path / f"{method}_small" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert "sync_bn: true" in (tmp_path / f"{method}_small" / "config.yaml").read_text()
    if method == "mocov3":
        assert all(r["candidates"] == 16 for r in rows)  # the keys of both processes
        online = {k: v for k, v in parameters[0].items() if k.startswith(("backbone.", "projector."))}
        momentum = {k.removeprefix("momentum_encoder.copies."): v for k, v in parameters[0].items()
                    if k.startswith("momentum_encoder.")}
        assert online.keys() == momentum.keys()
        assert any(not torch.equal(online[k], momentum[k]) for k in online)  # the EMA trails the online
    else:
        assert all(r["candidates"] == 2 * 16 for r in rows)  # both views of both processes
