"""The memory banks of InstDisc and CMC under `accelerate launch` with 2 CPU processes (gloo): after
2 steps both processes hold the same banks, each having applied every process's updates (the rows
of the samples either read moved, all others as initialised), and the same NCE constant."""

import pytest
import torch
from run_helpers import RECIPES
from test_launch import probe, probe_settings

from sslpipe.pipeline.shardlist import SampleIndex, resolve_shards
from sslpipe.train import loop
from sslpipe.train.config import load_config

BANKS = {"instdisc": ["bank.rows"], "cmc": ["bank_l.rows", "bank_ab.rows"]}


@pytest.mark.parametrize("method", sorted(BANKS))
def test_both_processes_apply_every_process_s_bank_updates(photo_shards, tmp_path, method):
    ranks = probe(method, photo_shards, tmp_path)
    overrides = probe_settings(method, photo_shards, tmp_path)
    samples = SampleIndex(resolve_shards(photo_shards))
    index_of = {key: i for i, key in enumerate(samples.keys(range(len(samples))))}
    seen = [{index_of[k] for batch in r["keys"] for k in batch} for r in ranks]
    assert [len(s) for s in seen] == [16, 16] and not seen[0] & seen[1]  # 2 steps x 8 per process
    read = torch.tensor(sorted(seen[0] | seen[1]))
    torch.manual_seed(0)  # as `train` builds the method: the initial bank
    recipe = load_config(RECIPES / f"{method}_small.yaml", overrides)
    initial = loop.build_method(recipe, samples=len(samples))
    untouched = torch.ones(len(samples), dtype=torch.bool)
    untouched[read] = False
    for name in BANKS[method]:
        rows = [r["buffers"][name] for r in ranks]
        assert torch.equal(rows[0], rows[1]), name
        assert torch.equal(rows[0][untouched], initial.get_buffer(name)[untouched]), name
        assert not torch.isclose(rows[0][read], initial.get_buffer(name)[read]).all(dim=1).any(), name
        assert torch.allclose(rows[0][read].norm(dim=1), torch.ones(len(read))), name
    if method == "instdisc":  # NCE: Z from both processes' first batches, the same on both
        z = [r["buffers"]["z.value"] for r in ranks]
        assert torch.equal(z[0], z[1]) and z[0] > 0
