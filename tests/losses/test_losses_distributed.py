"""`sslpipe.distributed`, the losses and the methods' parts (memory bank, queue) across 2 gloo
processes on CPU, against one process.

One spawn runs every check (starting processes costs most of the time): each rank takes its slice
of a fixed global batch, and saves what it computed; the tests compare in the parent process.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslpipe import distributed
from sslpipe.losses import nt_xent, sinkhorn
from sslpipe.methods.parts import FeatureQueue, MemoryBank

WORLD = 2
N = 4  # samples per rank
D_IN, D = 6, 5
T = 0.2


def _inputs():
    g = torch.Generator().manual_seed(0)
    prototypes = torch.nn.functional.normalize(torch.randn(10, 8, generator=g), dim=1)
    features = torch.nn.functional.normalize(torch.randn(WORLD * N, 8, generator=g), dim=1)
    return {
        "x": torch.randn(WORLD * N, 3, generator=g),
        "weights": torch.randn(WORLD * N, 3, generator=g),
        "h1": torch.randn(WORLD * N, D_IN, generator=g),
        "h2": torch.randn(WORLD * N, D_IN, generator=g),
        "projection": torch.randn(D_IN, D, generator=g),
        "scores": features @ prototypes.t(),  # cosine scale, (W*N, 10)
        "bank_index": torch.randperm(3 * WORLD * N, generator=g)[:WORLD * N],  # rows the global batch updates
        "bank_features": torch.randn(WORLD * N, 8, generator=g),
    }


BANK_SIZE = 3 * WORLD * N


def _bank(per_rank):
    return MemoryBank(BANK_SIZE, 8, per_rank=per_rank, generator=torch.Generator().manual_seed(5))


def _worker(rank, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        inputs = torch.load(os.path.join(folder, "inputs.pt"))
        mine = slice(rank * N, (rank + 1) * N)
        out = {"world_size": distributed.world_size(), "rank": distributed.rank()}

        # gather_with_grad: rank r weighs the gathered batch by (r + 1).
        x = inputs["x"][mine].clone().requires_grad_()
        gathered = distributed.gather_with_grad(x)
        (gathered * inputs["weights"] * (rank + 1)).sum().backward()
        out["gathered"], out["gathered_grad"] = gathered.detach(), x.grad

        keys = distributed.gather(inputs["x"][mine].clone().requires_grad_())
        out["keys"], out["keys_requires_grad"] = keys, keys.requires_grad

        out["sum"] = distributed.all_reduce_sum_(torch.tensor([rank + 1.0, 10.0]))
        out["max"] = distributed.all_reduce_max_(torch.tensor([rank + 1.0, -rank * 1.0]))
        out["broadcast"] = distributed.broadcast_(torch.tensor([rank + 5.0]), src=1)

        # nt_xent on a tiny "model": a projection shared by both ranks, as DDP would hold it.
        projection = inputs["projection"].clone().requires_grad_()
        h1 = inputs["h1"][mine].clone().requires_grad_()
        h2 = inputs["h2"][mine].clone().requires_grad_()
        loss, candidates = nt_xent(h1 @ projection, h2 @ projection, T)
        loss.backward()
        out["loss"], out["candidates"] = loss.detach(), candidates
        out["h1_grad"], out["h2_grad"] = h1.grad, h2.grad
        out["projection_grad"] = projection.grad.clone()
        # What DDP does to parameter gradients: all-reduce, then divide by the world size.
        out["projection_grad_ddp"] = distributed.all_reduce_sum_(projection.grad) / WORLD

        out["codes"] = sinkhorn(inputs["scores"][mine], eps=0.05, iterations=3)
        out["codes_fp16"] = sinkhorn(inputs["scores"][mine].half(), eps=0.05, iterations=3)

        # The memory bank: replicated (every rank applies every rank's rows) and per rank.
        for per_rank in (False, True):
            bank = _bank(per_rank)
            bank.update(inputs["bank_index"][mine], inputs["bank_features"][mine], momentum=0.5)
            out[f"bank_per_rank={per_rank}"] = bank.rows.clone()
        queue = FeatureQueue(4 * N, 8)  # MoCo's use: every rank pushes the gathered keys
        queue.push(distributed.gather(inputs["bank_features"][mine]))
        out["queue"] = queue.rows.clone()
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(inputs, [rank 0 results, rank 1 results])."""
    folder = tmp_path_factory.mktemp("gloo")
    inputs = _inputs()
    torch.save(inputs, folder / "inputs.pt")
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return inputs, [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


def _slice(rank):
    return slice(rank * N, (rank + 1) * N)


def test_ranks(run):
    _, results = run
    assert [(r["world_size"], r["rank"]) for r in results] == [(WORLD, 0), (WORLD, 1)]


def test_gather_with_grad_order_and_gradient(run):
    inputs, results = run
    # The single-process equivalent: the sum of both ranks' objectives on the whole batch.
    x = inputs["x"].clone().requires_grad_()
    sum((x * inputs["weights"] * (r + 1)).sum() for r in range(WORLD)).backward()
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["gathered"], inputs["x"], rtol=0, atol=0)
        # Each rank's slice receives the gradient of every rank's use of it: (1 + 2) * weights.
        torch.testing.assert_close(result["gathered_grad"], x.grad[_slice(rank)])
        torch.testing.assert_close(result["gathered_grad"], 3 * inputs["weights"][_slice(rank)])


def test_gather_order_without_gradient(run):
    inputs, results = run
    for result in results:
        torch.testing.assert_close(result["keys"], inputs["x"], rtol=0, atol=0)
        assert result["keys_requires_grad"] is False


def test_reductions_and_broadcast(run):
    _, results = run
    for result in results:
        assert result["sum"].tolist() == [3.0, 20.0]
        assert result["max"].tolist() == [2.0, 0.0]
        assert result["broadcast"].tolist() == [6.0]


def _naive_rank_loss(z1, z2, rows):
    """This rank's anchors (z1 and z2 rows `rows`) against all 2*N*W views, loops, float64."""
    views = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    total = z1.shape[0]
    loss = 0.0
    for offset in (0, total):
        terms = []
        for i in rows:
            a, p = offset + i, (offset + i + total) % (2 * total)
            logits = torch.stack([views[a].dot(views[j]) / T for j in range(2 * total) if j != a])
            terms.append(torch.logsumexp(logits, dim=0) - views[a].dot(views[p]) / T)
        loss = loss + sum(terms) / len(terms)
    return loss


def test_nt_xent_per_rank_loss_spans_global_candidates(run):
    inputs, results = run
    z1, z2 = inputs["h1"] @ inputs["projection"], inputs["h2"] @ inputs["projection"]
    for rank, result in enumerate(results):
        assert result["candidates"] == 2 * N * WORLD
        expected = _naive_rank_loss(z1, z2, range(rank * N, (rank + 1) * N))
        torch.testing.assert_close(result["loss"].double(), expected, rtol=1e-5, atol=1e-6)
    # The mean over ranks is the single-process loss on the global batch.
    single, candidates = nt_xent(z1, z2, T)
    assert candidates == 2 * N * WORLD
    torch.testing.assert_close(sum(r["loss"] for r in results) / WORLD, single)


def test_nt_xent_gradients_match_single_process_under_ddp_averaging(run):
    """Each rank backpropagates its own loss L_r, but through the gathered views its inputs'
    gradient is d(sum_s L_s)/dh_r = W * d(mean_s L_s)/dh_r. DDP then averages parameter
    gradients over ranks (sum / W), which gives exactly the gradient of mean_s L_s: the
    single-process loss on the global batch, as if one big GPU had run it."""
    inputs, results = run
    projection = inputs["projection"].clone().requires_grad_()
    h1, h2 = inputs["h1"].clone().requires_grad_(), inputs["h2"].clone().requires_grad_()
    single, _ = nt_xent(h1 @ projection, h2 @ projection, T)
    single.backward()

    for rank, result in enumerate(results):
        torch.testing.assert_close(result["h1_grad"], WORLD * h1.grad[_slice(rank)], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result["h2_grad"], WORLD * h2.grad[_slice(rank)], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result["projection_grad_ddp"], projection.grad, rtol=1e-4, atol=1e-6)
    # Summed over ranks, the local parameter gradients are W times the single-process gradient.
    summed = sum(r["projection_grad"] for r in results)
    torch.testing.assert_close(summed, WORLD * projection.grad, rtol=1e-4, atol=1e-6)
    # Not trivially so: a rank's local gradient alone is not the single-process one.
    assert not torch.allclose(results[0]["projection_grad"], projection.grad, rtol=1e-3, atol=1e-5)


def test_sinkhorn_codes_are_rows_of_the_global_sinkhorn(run):
    inputs, results = run
    codes = sinkhorn(inputs["scores"], eps=0.05, iterations=3)
    codes_fp16 = sinkhorn(inputs["scores"].half(), eps=0.05, iterations=3)
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["codes"], codes[_slice(rank)], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(result["codes_fp16"], codes_fp16[_slice(rank)], rtol=1e-5, atol=1e-7)
    # Sanity: the global normalisation matters (a local sinkhorn differs).
    local = sinkhorn(inputs["scores"][_slice(0)], eps=0.05, iterations=3)
    assert not torch.allclose(local, codes[_slice(0)], rtol=1e-3, atol=1e-5)


def test_single_process_is_identity():
    assert not (dist.is_available() and dist.is_initialized())
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_with_grad(x) is x
    keys = distributed.gather(x)
    assert torch.equal(keys, x) and not keys.requires_grad
    y = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum_(y) is y and distributed.all_reduce_max_(y) is y
    assert distributed.broadcast_(y) is y and y.tolist() == [1.0, 2.0]


def test_a_replicated_memory_bank_applies_every_ranks_rows_on_every_rank(run):
    inputs, results = run
    single = _bank(per_rank=False)
    single.update(inputs["bank_index"], inputs["bank_features"], momentum=0.5)
    for result in results:
        torch.testing.assert_close(result["bank_per_rank=False"], single.rows, rtol=0, atol=0)
    # Per rank: each bank holds its own rows' update only.
    for rank, result in enumerate(results):
        own = _bank(per_rank=True)
        own.update(inputs["bank_index"][_slice(rank)], inputs["bank_features"][_slice(rank)], momentum=0.5)
        torch.testing.assert_close(result["bank_per_rank=True"], own.rows, rtol=0, atol=0)
    assert not torch.equal(results[0]["bank_per_rank=True"], results[1]["bank_per_rank=True"])


def test_a_replicated_queue_is_the_same_on_every_rank(run):
    inputs, results = run
    assert torch.equal(results[0]["queue"], results[1]["queue"])
    torch.testing.assert_close(results[0]["queue"][:WORLD * N], inputs["bank_features"], rtol=0, atol=0)
