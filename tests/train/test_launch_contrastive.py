"""MoCo v3 and InvaSpread under `accelerate launch --multi_gpu --num_processes 2` (gloo, CPU),
with `model.sync_bn=true`: the candidates span both processes' batches and both processes end
with identical weights, the momentum encoder's included (see test_launch.py, rank_probe.py)."""

import json

import pytest
import torch
from test_launch import HERE, RECIPES, launch

HEADS = {"mocov3": ["method.projector=[64, 32]", "method.predictor_hidden=16"],
         "invaspread": ["method.dim=32"]}


@pytest.mark.parametrize("method", ["mocov3", "invaspread"])
def test_two_processes_sync_bn_identical_weights_and_global_candidates(photo_shards, tmp_path, method):
    launch(HERE / "rank_probe.py", tmp_path, RECIPES / f"{method}_small.yaml", f"data.train={photo_shards}",
           "data.batch_size=16", f"train.out={tmp_path}", "train.max_steps=2", "train.log_every=1",
           "data.num_threads=1", "model.sync_bn=true", *HEADS[method], cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    seen = [{k for batch in r["keys"] for k in batch} for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # 8 different images per process and step
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
