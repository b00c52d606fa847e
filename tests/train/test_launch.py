"""Several processes on this CPU, as on GPUs: `accelerate launch --multi_gpu --num_processes 2`
(gloo). Each process reads its own shards; the methods see the global batch."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import SMALL

HERE = Path(__file__).parent
RECIPES = HERE.parents[1] / "recipes"


def launch(*args, cwd):
    with socket.socket() as s:  # a free port for the processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), *map(str, args)]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def small(method, shards, out):
    heads = {"simclr": ["method.projector=[64, 32]"],
             "mocov2": ["method.head=[64, 32]", "method.queue_size=64"]}[method]
    return [RECIPES / f"{method}_small.yaml", f"data.train={shards}", "data.batch_size=16",
            f"train.out={out}", "train.max_steps=2", "train.log_every=1", "data.num_threads=1", *heads]


def probe_settings(method, shards, out, *extra):
    """The overrides of a 2-step run of `method`'s small recipe (`run_helpers.SMALL`), batch 16."""
    return [f"data.train={shards}", "data.batch_size=16", f"train.out={out}", "train.max_steps=2",
            "train.log_every=1", "data.num_threads=1", *SMALL[method], *extra]


def probe(method, shards, out, *extra):
    """Two processes run `method`'s small recipe under `rank_probe.py`: what each saved, after
    checking that each read its own images."""
    launch(HERE / "rank_probe.py", out, RECIPES / f"{method}_small.yaml",
           *probe_settings(method, shards, out, *extra), cwd=out)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    seen = [{k for batch in r["keys"] for k in batch} for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # 8 different images per process and step
    return ranks


def test_accelerate_launch_module_runs_two_processes(photo_shards, tmp_path):
    launch("-m", "sslpipe.train", *small("simclr", photo_shards, tmp_path), cwd=tmp_path)
    run_dir = tmp_path / "simclr_small"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["candidates"] == 2 * 16 for r in rows)  # 2 x the global batch, gathered from both
    assert "processes: 2" in (run_dir / "config.yaml").read_text()
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert [r["loader"]["rank"] for r in saved["ranks"]] == [0, 1]


@pytest.mark.parametrize("method", ["simclr", "mocov2"])
def test_ranks_read_disjoint_shards_and_keep_identical_weights(photo_shards, tmp_path, method):
    launch(HERE / "rank_probe.py", tmp_path, *small(method, photo_shards, tmp_path), cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    seen = [{k for batch in r["keys"] for k in batch} for r in ranks]
    assert all(len(batch) == 8 for r in ranks for batch in r["keys"])  # 16 over 2 processes
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name
    if method == "mocov2":
        # Each step enqueues the keys of both processes: 2 steps x 16 at the same place everywhere.
        for r in ranks:
            assert int(r["buffers"]["queue.position"]) == 2 * 16
        assert torch.equal(ranks[0]["buffers"]["queue.rows"], ranks[1]["buffers"]["queue.rows"])
        rows = [json.loads(x) for x in (tmp_path / "mocov2_small" / "metrics.jsonl").read_text().splitlines()]
        assert all(r["enqueued"] == 16 for r in rows)
