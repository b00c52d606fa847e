"""sslpipe.counting: kernels, bytes, host syncs and launches, counted on the CPU."""

import pytest
import torch

from sslpipe.counting import DispatchCounter, compiled_counts


def test_kernels_and_bytes_of_plain_ops():
    x = torch.randn(64, 32)
    with DispatchCounter(roots=[x]) as counted:
        y = x + 1           # reads 8 KiB, writes 8 KiB
        y.mul_(2)           # in place: the same again
        view = y.t()        # a view: no kernel
        z = view.sum(dim=0)  # reads y, writes 64 floats
    assert counted.kernels == 3 and counted.ops == {"add": 1, "mul_": 1, "sum": 1}
    assert counted.bytes == 4 * 8192 + 8192 + 64 * 4
    assert z.shape == (64,) and counted.sync_count == 0


def test_a_broadcast_input_counts_its_distinct_elements_once():
    x, scale = torch.randn(8, 3, 16, 16), torch.randn(8, 1, 1, 1)
    with DispatchCounter(roots=[x]) as counted:
        x * scale.expand(8, 3, 16, 16)
    assert counted.bytes == 2 * x.numel() * 4 + 8 * 4


def test_host_syncs_by_kind_only_for_device_tensors():
    x = torch.randn(16)
    host = torch.randn(16)  # not a root: made on the host
    with DispatchCounter(roots=[x]) as counted:
        x.sum().item()
        bool(x[0] > 0)
        x.tolist()
        x[x > 0]
        torch.nonzero(x)
        x.cpu()
        torch.tensor([1.0], device="cpu")
        torch.randperm(4).to("cpu")                     # a host tensor to "the device"
        torch.randperm(4).to("cpu", non_blocking=True)  # ... without waiting: no sync
        host.sum().item(), host.tolist(), host[host > 0]  # host tensors: nothing to wait for
    assert counted.syncs == {"item": 2, "tolist": 1, "index": 1, "nonzero": 1, "cpu": 1,
                             "torch.tensor(..., device=)": 1, "host-to-device copy": 1}
    assert counted.sync_count == 8


def test_device_ness_flows_through_ops_modules_and_factories():
    model = torch.nn.Linear(4, 2)
    with DispatchCounter(roots=[model]) as counted:
        out = model(torch.randn(3, 4))      # the weights are on the device: so is the output
        out.sum().item()
        torch.zeros(2, device="cpu").sum().item()  # an explicit device=: a device tensor
        torch.zeros(2).sum().item()                # no device=: made on the host
    assert counted.syncs == {"item": 2}


@pytest.mark.parametrize("lists, tensors, launches", [(1, 200, 2), (2, 200, 4), (3, 48, 1), (3, 49, 2)])
def test_foreach_launches_follow_multi_tensor_apply(lists, tensors, launches):
    groups = [[torch.zeros(10) for _ in range(tensors)] for _ in range(lists)]
    with DispatchCounter(roots=[t for g in groups for t in g]) as counted:
        if lists == 1:
            torch._foreach_add_(groups[0], 1.0)
        elif lists == 2:
            torch._foreach_add_(groups[0], groups[1])
        else:
            torch._foreach_addcmul_(groups[0], groups[1], groups[2])
    assert counted.kernels == 1 and counted.launches == launches


def test_foreach_launches_split_large_tensors_into_blocks():
    big = [torch.zeros(320 * 65536 + 1)]  # one element past 320 blocks of 65,536
    with DispatchCounter(roots=big) as counted:
        torch._foreach_mul_(big, 2.0)
    assert counted.launches == 2


def test_compiled_counts_of_a_pointwise_and_an_extern_kernel():
    torch._dynamo.reset()
    x, w = torch.randn(64, 64), torch.randn(64, 64)
    out, counts = compiled_counts(torch.compile(lambda x: x * 2 + 1, dynamic=False), x)
    assert torch.allclose(out, x * 2 + 1)
    assert counts.kernels == 1 and counts.bytes == 2 * x.numel() * 4  # read x, write the result
    torch._dynamo.reset()
    _, counts = compiled_counts(torch.compile(lambda x, w: (x @ w).relu() + x.mean(), dynamic=False), x, w)
    # the matmul (a library call: x, w, its output), the mean (x, a scalar), relu + add in place
    # on the matmul's output (read and written) with the scalar
    assert sorted(counts.loop_bytes) == sorted([3 * 16384, 16384 + 4, 2 * 16384 + 4])
    assert counts.kernels == 2 and counts.compile_s > 0
