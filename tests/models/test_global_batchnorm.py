"""GlobalBatchNorm2d and 1d across 2 gloo processes against torch's BatchNorm on the concatenated batch.

One spawn runs every distributed check (starting processes costs most of the time): each rank
takes its half of fixed global batches and saves what it computed; the tests compare in the
parent process.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sslpipe import distributed
from sslpipe.counting import DispatchCounter
from sslpipe.models import GlobalBatchNorm1d, GlobalBatchNorm2d, convert_global_batchnorm
from sslpipe.models.split_batchnorm import SplitBatchNorm2d

WORLD = 2
N, C, H, W = 3, 4, 3, 2  # per rank
STEPS = 2
SCALE = torch.tensor([1.0, 3.0, 0.5, 2.0]).view(1, C, 1, 1)  # channels of different scales and means
SHIFT = torch.tensor([0.5, -2.0, 4.0, 0.0]).view(1, C, 1, 1)
CASES = [("momentum", {}), ("cumulative", {"momentum": None, "affine": False})]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "x": [torch.randn(WORLD * N, C, H, W, generator=g) * SCALE + SHIFT for _ in range(STEPS)],
        "upstream": [torch.randn(WORLD * N, C, H, W, generator=g) for _ in range(STEPS)],  # dL/dy
        "weight": torch.rand(C, generator=g) + 0.5,
        "bias": torch.randn(C, generator=g),
    }


def _layer(cls, inputs, **kwargs):
    layer = cls(C, **kwargs)
    if layer.affine:
        with torch.no_grad():
            layer.weight.copy_(inputs["weight"])
            layer.bias.copy_(inputs["bias"])
    return layer


def _steps(layer, xs, upstream, channels_last_at=1, autocast=False):
    """Forward and backward of `layer` on each x; the loss is sum(y * upstream) (so dL/dy = upstream)."""
    seen = []
    for step, (x, u) in enumerate(zip(xs, upstream)):
        if step == channels_last_at:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        (y.float() * u).sum().backward()
        record = {"y": y.detach(), "x_grad": x.grad,
                  "channels_last": y.ndim == 4 and y.is_contiguous(memory_format=torch.channels_last)}
        if layer.affine:
            record["weight_grad"], record["bias_grad"] = layer.weight.grad.clone(), layer.bias.grad.clone()
            layer.weight.grad = layer.bias.grad = None
        seen.append(record)
    state = {k: v.clone() for k, v in layer.state_dict().items() if k not in ("weight", "bias")}
    return seen, state


def _worker(rank, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        inputs = torch.load(os.path.join(folder, "inputs.pt"))
        mine = slice(rank * N, (rank + 1) * N)
        xs, upstream = [x[mine] for x in inputs["x"]], [u[mine] for u in inputs["upstream"]]
        out = {}
        for case, kwargs in CASES:
            out[case] = _steps(_layer(GlobalBatchNorm2d, inputs, **kwargs), xs, upstream)
        # The heads' BatchNorm1d: (N, C) rows, the first pixel of each channel.
        out["1d"] = _steps(_layer(GlobalBatchNorm1d, inputs), [x[:, :, 0, 0] for x in xs],
                           [u[:, :, 0, 0] for u in upstream], channels_last_at=-1)
        out["bf16"] = _steps(_layer(GlobalBatchNorm2d, inputs), [x.bfloat16() for x in xs], upstream,
                             autocast=True)
        for case in ("momentum", "bf16"):  # what DDP does to parameter gradients: mean over ranks
            for record in out[case][0]:
                for key in ("weight_grad", "bias_grad"):
                    record[key] = distributed.all_reduce_sum_(record[key]) / WORLD

        layer = _layer(GlobalBatchNorm2d, inputs)
        x = xs[0].clone().requires_grad_()
        with DispatchCounter(roots=[layer, x]) as counted:
            (layer(x) * upstream[0]).sum().backward()
        out["syncs"], out["kernels"] = dict(counted.syncs), counted.kernels
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gloo-bn")
    inputs = _inputs()
    torch.save(inputs, folder / "inputs.pt")
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return inputs, [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


def _reference(inputs, **kwargs):
    """nn.BatchNorm2d on the concatenated batches, the loss summed over ranks."""
    return _steps(_layer(nn.BatchNorm2d, inputs, **kwargs), inputs["x"], inputs["upstream"])


def _rank_slice(r):
    return slice(r * N, (r + 1) * N)


@pytest.mark.parametrize("case, kwargs", CASES)
def test_outputs_and_input_gradients_are_those_of_the_whole_batch(run, case, kwargs):
    inputs, ranks = run
    ref, _ = _reference(inputs, **kwargs)
    for r, out in enumerate(ranks):
        for step, (mine, want) in enumerate(zip(out[case][0], ref)):
            torch.testing.assert_close(mine["y"], want["y"][_rank_slice(r)], atol=1e-5, rtol=1e-5)
            # x.grad includes what the other rank's loss sends back through the shared statistics.
            torch.testing.assert_close(mine["x_grad"], want["x_grad"][_rank_slice(r)], atol=1e-5, rtol=1e-5)
            assert mine["channels_last"] == (step == 1)     # the input's memory format is kept
    # Not the local statistics: one rank's half alone normalises differently.
    local = _layer(nn.BatchNorm2d, inputs, **kwargs)(inputs["x"][0][:N])
    assert not torch.allclose(local, ranks[0][case][0][0]["y"], atol=1e-2)


def test_batchnorm1d_outputs_gradients_and_statistics_are_the_whole_batch_ones(run):
    inputs, ranks = run
    ref, want = _steps(_layer(nn.BatchNorm1d, inputs), [x[:, :, 0, 0] for x in inputs["x"]],
                       [u[:, :, 0, 0] for u in inputs["upstream"]], channels_last_at=-1)
    for r, out in enumerate(ranks):
        seen, state = out["1d"]
        for mine, expected in zip(seen, ref):
            for key in ("y", "x_grad"):
                torch.testing.assert_close(mine[key], expected[key][_rank_slice(r)], atol=1e-5, rtol=1e-5)
        for key in want:
            torch.testing.assert_close(state[key], want[key], atol=1e-5, rtol=1e-5)


def test_weight_and_bias_gradients_averaged_as_ddp_are_the_whole_batch_ones(run):
    inputs, ranks = run
    ref, _ = _reference(inputs)
    for out in ranks:
        for mine, want in zip(out["momentum"][0], ref):
            torch.testing.assert_close(mine["weight_grad"], want["weight_grad"] / WORLD, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mine["bias_grad"], want["bias_grad"] / WORLD, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case, kwargs", CASES)
def test_running_statistics_after_two_steps_are_the_whole_batch_ones(run, case, kwargs):
    inputs, ranks = run
    _, want = _reference(inputs, **kwargs)
    assert int(want["num_batches_tracked"]) == STEPS
    for out in ranks:
        state = out[case][1]
        assert state.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(state[key], want[key], atol=1e-5, rtol=1e-5)


def test_bfloat16_under_autocast_keeps_the_dtype_with_float32_statistics(run):
    inputs, ranks = run
    ref_inputs = {**inputs, "x": [x.bfloat16().float() for x in inputs["x"]]}  # the values ranks saw
    ref, want_state = _reference(ref_inputs)
    for r, out in enumerate(ranks):
        seen, state = out["bf16"]
        for mine, want in zip(seen, ref):
            assert mine["y"].dtype == mine["x_grad"].dtype == torch.bfloat16
            # bf16 keeps 8 bits: the output, the gradient arriving at it (dL/dy is bf16 like y) and
            # the input gradient are rounded; the running statistics are not.
            for key in ("y", "x_grad"):
                torch.testing.assert_close(mine[key].float(), want[key][_rank_slice(r)], atol=3e-2, rtol=1e-2)
            for key in ("weight_grad", "bias_grad"):
                torch.testing.assert_close(mine[key], want[key] / WORLD, atol=5e-2, rtol=1e-2)
        for key in want_state:
            assert state[key].dtype == want_state[key].dtype
            torch.testing.assert_close(state[key], want_state[key], atol=1e-5, rtol=1e-5)


def test_forward_and_backward_do_not_synchronise_with_the_host(run):
    _, ranks = run
    for out in ranks:
        assert out["kernels"] > 0          # the counter saw the step
        assert out["syncs"] == {}


def test_one_process_is_batchnorm_in_training_and_eval():
    inputs = _inputs()
    ours, ref = _layer(GlobalBatchNorm2d, inputs), _layer(nn.BatchNorm2d, inputs)
    seen, state = _steps(ours, inputs["x"], inputs["upstream"])
    want_seen, want_state = _steps(ref, inputs["x"], inputs["upstream"])
    for mine, want in zip(seen, want_seen):
        for key in want:
            assert torch.equal(torch.as_tensor(mine[key]), torch.as_tensor(want[key])), key
    for key in want_state:
        assert torch.equal(state[key], want_state[key]), key
    ours.eval()
    ref.eval()
    assert torch.equal(ours(inputs["x"][0]), ref(inputs["x"][0]))


def test_convert_replaces_batchnorm2d_and_1d_keeping_their_state_and_leaves_split_batchnorm():
    split = SplitBatchNorm2d(3, splits=2)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, momentum=0.3, eps=1e-3),
                          nn.Sequential(nn.BatchNorm2d(3, affine=False), split), nn.BatchNorm1d(3))
    bn = model[1]
    with torch.no_grad():
        bn.weight.uniform_()
        bn.running_mean.uniform_()
    bn.bias.requires_grad_(False)
    bn.num_batches_tracked += 5
    model.eval()
    params = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}

    converted = convert_global_batchnorm(model)
    assert converted is model
    assert type(model[1]) is GlobalBatchNorm2d and type(model[2][0]) is GlobalBatchNorm2d
    assert model[2][1] is split and type(model[3]) is GlobalBatchNorm1d
    assert (model[1].eps, model[1].momentum, model[2][0].affine) == (1e-3, 0.3, False)
    assert not model[1].training and not model[2][0].training
    assert all(p is params[name] for name, p in model.named_parameters())  # an optimizer's stay valid
    assert model[1].weight.requires_grad and not model[1].bias.requires_grad
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert type(convert_global_batchnorm(nn.BatchNorm2d(2))) is GlobalBatchNorm2d
    assert type(convert_global_batchnorm(nn.BatchNorm1d(2))) is GlobalBatchNorm1d
