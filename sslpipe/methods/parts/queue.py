"""A FIFO queue of feature rows: MoCo's queue of keys, SwAV's queue of past embeddings."""

from __future__ import annotations

import torch

from sslpipe.methods.parts.state import Part


class FeatureQueue(Part):
    """The `length` most recent rows pushed, in a circular buffer.

    `rows` (length, dim) holds them (row order carries no meaning: the oldest rows are overwritten
    next, at `position`). Replicated (the default) when every process pushes every process's rows
    (gathered by the caller); `per_rank=True` when each pushes its own. `position` and `filled`
    are mirrored on the host, so reading them costs no device synchronisation.
    """

    def __init__(self, length: int, dim: int, *, per_rank: bool = False, initial: torch.Tensor | None = None):
        super().__init__(per_rank)
        if length < 0 or dim < 1:
            raise ValueError(f"a queue needs length >= 0 and dim >= 1, got {length} and {dim}")
        self.length = length
        self.add_state("rows", torch.zeros(length, dim) if initial is None else initial.clone())
        self.add_state("position", torch.zeros((), dtype=torch.long))  # where the next row goes
        self.add_state("filled", torch.zeros((), dtype=torch.long))    # rows pushed, up to length
        self._position = self._filled = 0

    @property
    def full(self) -> bool:
        """Whether every row holds a pushed row (none is left from the initial values)."""
        return self.length > 0 and self._filled >= self.length

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        """Write (n, dim) rows over the oldest, n <= length."""
        n = rows.shape[0]
        if n > self.length:
            raise ValueError(f"cannot push {n} rows into a queue of {self.length}")
        start, stop = self._position, self._position + n
        first = min(stop, self.length) - start  # the rows before the end of the buffer; the rest wrap
        self.rows[start:start + first] = rows[:first].to(self.rows.dtype)
        self.rows[:n - first] = rows[first:].to(self.rows.dtype)
        self._position, self._filled = stop % self.length, min(self._filled + n, self.length)
        self.position.fill_(self._position)
        self.filled.fill_(self._filled)

    def state_loaded(self) -> None:
        self._position, self._filled = int(self.position), int(self.filled)
