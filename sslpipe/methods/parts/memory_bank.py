"""An index-addressed memory bank: one feature row per training sample (InstDisc, CMC).

Rows are addressed by the loader's global sample index (`Batch.index`), stable over epochs and
rank layouts. The update is InstDisc's (lemniscate.pytorch, `LinearAverage`/`NCEAverage`):
v_i <- normalize(m v_i + (1 - m) f_i), applied after the step's loss was computed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sslpipe import distributed
from sslpipe.methods.parts.state import Part


class MemoryBank(Part):
    """(size, dim) float32 rows, initialised as lemniscate's: U[-s, s] with s = 1 / sqrt(dim / 3).

    Replicated by default: `update` gathers every process's indices and features, and every
    process applies them all, so all hold the same bank, saved once with the model. With
    `per_rank=True` each process updates its own copy with its own samples, saved per process.
    """

    def __init__(self, size: int, dim: int, *, per_rank: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__(per_rank)
        if size < 1 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 1 and dim >= 1, got {size} and {dim}")
        bound = 1 / math.sqrt(dim / 3)
        self.add_state("rows", torch.rand(size, dim, generator=generator) * (2 * bound) - bound)

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """(..., ) int64 indices -> (..., dim) rows, without gradient (the bank is no parameter)."""
        return self.rows[index].detach()

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
        """v_i <- normalize(m v_i + (1 - m) f_i) for the (n,) indices and their (n, dim) features."""
        if index.shape[0] != features.shape[0]:
            raise ValueError(f"{index.shape[0]} indices for {features.shape[0]} feature rows")
        if not self.per_rank:  # every process applies every process's rows: the banks stay identical
            index, features = distributed.gather(index), distributed.gather(features)
        mixed = self.rows[index] * momentum + features.float() * (1 - momentum)
        self.rows.index_copy_(0, index, F.normalize(mixed, dim=1))
