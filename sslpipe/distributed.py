"""The only module that talks to `torch.distributed`.

Every function works in a single process too: when `torch.distributed` is unavailable or no
process group is initialized, the world has one rank and each collective is the identity (the
in-place ones leave their argument unchanged). Losses call these helpers unconditionally, so the
same code runs on one CPU and on many GPUs.

    from sslpipe import distributed

    everything = distributed.gather_with_grad(z)     # (N, D) -> (W*N, D), rank order, with grad
"""

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

if dist.is_available():
    # Imported here, before any process group exists: `all_gather(tensor, group=group.WORLD)`
    # evaluates its default when the module is first imported, so an import after
    # `init_process_group` pins that process group in the default forever. It then outlives
    # `destroy_process_group`, is torn down during interpreter shutdown, and gloo aborts the
    # process ("terminate called without an active exception"). We pass the group explicitly too.
    import torch.distributed.nn.functional as dist_nn

__all__ = ["all_reduce_max_", "all_reduce_sum_", "broadcast_", "gather", "gather_with_grad", "rank",
           "world_size"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed."""
    return dist.get_rank() if _active() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather `x` (N, ...) into (W*N, ...), rank order, differentiable on every rank.

    Every rank must pass the same shape. In the backward pass, the gradient that arrives for
    rank r's slice is summed over all ranks and delivered to rank r, so `x.grad` on rank r is
    sum_s dL_s/dx_r: the slice is also a negative in the other ranks' losses (SimCLR).
    """
    if world_size() == 1:
        return x
    # A plain `dist.all_gather` writes into fresh tensors outside autograd: the gathered batch is
    # a constant, so no gradient flows through the other ranks' use of our samples. Putting the
    # local tensor back into its slot (a common workaround) only recovers dL_r/dx_r and still
    # drops sum_{s != r} dL_s/dx_r. The autograd-aware all_gather sends the gathered gradients
    # back to their owners (reduce-scatter; all-to-all + sum on gloo) and sums them.
    with warnings.catch_warnings():
        # Deprecated (torch 2.10+) in favour of `_functional_collectives`, a private module; this is
        # the autograd-aware gather available across the torch versions we support.
        warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
        parts = dist_nn.all_gather(x.contiguous(), group=dist.group.WORLD)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """All-gather `x` (N, ...) into (W*N, ...), rank order, without gradient (MoCo keys).

    Returns `x.detach()` in a single process, so the result never carries a graph.
    """
    if world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def all_reduce_sum_(x: Tensor) -> Tensor:
    """Sum `x` over all ranks, in place; returns `x`."""
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max_(x: Tensor) -> Tensor:
    """Element-wise maximum of `x` over all ranks, in place; returns `x`."""
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    """Overwrite `x` on every rank with rank `src`'s `x`, in place; returns `x`."""
    if world_size() > 1:
        dist.broadcast(x, src=src)
    return x
