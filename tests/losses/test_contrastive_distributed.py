"""MoCo v3's and InvaSpread's losses across 2 gloo processes on CPU, against one process on the
global batch. Both gather the other processes' features without gradient (MoCo v3's keys,
InvaSpread's columns, which the official code detaches too), so each process's input gradient is
W times its slice of the single-process gradient and DDP's average of the parameter gradients is
the single-process gradient.

One spawn runs every check; each rank takes its slice of a fixed global batch and saves what it
computed, compared in the parent process.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslpipe import distributed
from sslpipe.losses import batch_criterion, moco_v3_ctr

WORLD = 2
N = 4  # samples per rank
D_IN, D = 6, 5
T_MOCO, T_SPREAD = 1.0, 0.1


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(WORLD * N, D_IN, generator=g) for name in ("h1", "h2", "k1", "k2")} | {
        "projection": torch.randn(D_IN, D, generator=g), "key_projection": torch.randn(D_IN, D, generator=g)}


def _moco(h1, h2, k1, k2, projection, key_projection):
    q1, q2 = h1 @ projection, h2 @ projection
    with torch.no_grad():
        keys1, keys2 = k1 @ key_projection, k2 @ key_projection
    return moco_v3_ctr(q1, keys2, T_MOCO) + moco_v3_ctr(q2, keys1, T_MOCO)


def _spread(h1, h2, projection):
    return batch_criterion(h1 @ projection, h2 @ projection, T_SPREAD)


def _worker(rank, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        inputs = torch.load(os.path.join(folder, "inputs.pt"))
        mine = {k: v[rank * N:(rank + 1) * N] for k, v in inputs.items() if k != "projection"}
        out = {"world_size": distributed.world_size()}
        for name in ("moco", "spread"):
            projection = inputs["projection"].clone().requires_grad_()
            h1, h2 = mine["h1"].clone().requires_grad_(), mine["h2"].clone().requires_grad_()
            if name == "moco":
                loss = _moco(h1, h2, mine["k1"], mine["k2"], projection, inputs["key_projection"])
            else:
                loss, out["spread_candidates"] = _spread(h1, h2, projection)
            loss.backward()
            out[f"{name}_loss"] = loss.detach()
            out[f"{name}_h1_grad"], out[f"{name}_h2_grad"] = h1.grad, h2.grad
            # What DDP does to parameter gradients: all-reduce, then divide by the world size.
            out[f"{name}_projection_grad"] = distributed.all_reduce_sum_(projection.grad) / WORLD
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gloo")
    inputs = _inputs()
    torch.save(inputs, folder / "inputs.pt")
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return inputs, [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


def _single(name, inputs):
    projection = inputs["projection"].clone().requires_grad_()
    h1, h2 = inputs["h1"].clone().requires_grad_(), inputs["h2"].clone().requires_grad_()
    if name == "moco":
        loss = _moco(h1, h2, inputs["k1"], inputs["k2"], projection, inputs["key_projection"])
    else:
        loss, _ = _spread(h1, h2, projection)
    loss.backward()
    return loss.detach(), h1.grad, h2.grad, projection.grad


@pytest.mark.parametrize("name", ["moco", "spread"])
def test_two_processes_equal_one_process_on_the_global_batch(run, name):
    inputs, results = run
    assert all(r["world_size"] == WORLD for r in results)
    loss, h1_grad, h2_grad, projection_grad = _single(name, inputs)
    # Each process's loss is the mean over its own anchors: their mean is the global loss.
    torch.testing.assert_close(sum(r[f"{name}_loss"] for r in results) / WORLD, loss)
    assert not torch.allclose(results[0][f"{name}_loss"], loss)  # a rank alone is not the global loss
    for rank, r in enumerate(results):
        mine = slice(rank * N, (rank + 1) * N)
        torch.testing.assert_close(r[f"{name}_h1_grad"], WORLD * h1_grad[mine], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r[f"{name}_h2_grad"], WORLD * h2_grad[mine], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r[f"{name}_projection_grad"], projection_grad, rtol=1e-4, atol=1e-6)


def test_moco_v3_labels_are_offset_by_rank(run):
    # Rank 1's queries are matched with keys N..2N-1 of the gathered batch: its loss by hand.
    inputs, results = run
    f = torch.nn.functional.normalize
    q1 = f(inputs["h1"][N:] @ inputs["projection"], dim=1)
    q2 = f(inputs["h2"][N:] @ inputs["projection"], dim=1)
    k1 = f(inputs["k1"] @ inputs["key_projection"], dim=1)
    k2 = f(inputs["k2"] @ inputs["key_projection"], dim=1)
    labels = torch.arange(N) + N
    ce = torch.nn.functional.cross_entropy
    by_hand = (ce(q1 @ k2.t() / T_MOCO, labels) + ce(q2 @ k1.t() / T_MOCO, labels)) * 2 * T_MOCO
    torch.testing.assert_close(results[1]["moco_loss"], by_hand)


def test_invaspread_columns_span_both_processes(run):
    _, results = run
    assert all(r["spread_candidates"] == 2 * N * WORLD for r in results)
