"""The contract of a photometric op: settings (a spec dataclass), a sampler, an apply.

An op instance serves one photometric stage: the views of one size, concatenated along the batch
(rows `[i*B:(i+1)*B]` are view i), each view with its own settings (None: the view does not use
the op). `sample` draws every sample's parameters from the op's own generator, so adding an op to
the table or to a spec leaves every other op's draws unchanged; `apply` is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

Params = dict[str, torch.Tensor]  # per-sample parameters, each of leading dim N; "on": (N,) bool


def probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


class PhotometricOp:
    """Base of the ops of the table (`sslpipe.pipeline.ops.OPS`).

    A subclass sets `key` (the view's YAML key), `Settings` (a frozen dataclass with a probability
    `p`; `key: 0.3` in YAML is short for `key: {p: 0.3}`) and implements `apply`; it overrides
    `sample` when it draws more than whether it applies.

    `apply(x, params, key)` maps float32 (n, 3, H, W) in [0, 1] to the same, for samples that all
    drew the op (the CPU executor gathers them). `select(x, params)` is the device's: the whole
    batch, the samples that did not draw the op left unchanged, without a host sync; by default a
    `torch.where` around `apply`, which an op overrides when it can mask for less memory traffic
    (an identity kernel, a threshold no value reaches). An op whose work differs per sample in a
    way a static value can specialise (the jitter's order) gives `block_key(params) -> (N,)
    int64`: the CPU executor runs the samples of one code together and passes the code as `key`.
    """

    key: ClassVar[str]
    Settings: ClassVar[type]
    block_key = None

    def __init__(self, settings: Sequence[object | None], batch_size: int, size: int, device: torch.device):
        self.settings, self.batch_size, self.size = tuple(settings), batch_size, size
        self.device = torch.device(device)
        self.n = len(self.settings) * batch_size
        self.p = self.per_view([s.p if s is not None else 0.0 for s in self.settings])

    @staticmethod
    def stage_key(settings, size: int):
        """A value the views of one stage must share when they use the op (the blur's kernel size)."""
        return None

    def per_view(self, values: Sequence, shape: tuple[int, ...] = ()) -> torch.Tensor:
        """One value (or `shape` values) per view -> (N, *shape) float32 on the device, built once."""
        t = torch.tensor(values, dtype=torch.float32).reshape(len(self.settings), 1, *shape)
        return t.expand(-1, self.batch_size, *shape).reshape(self.n, *shape).to(self.device)

    def uniform(self, generator: torch.Generator, *shape: int) -> torch.Tensor:
        """U[0, 1) of shape (N, *shape) from `generator`, on the device."""
        return torch.rand(self.n, *shape, generator=generator, device=self.device)

    def sample(self, generator: torch.Generator) -> Params:
        return {"on": self.uniform(generator) < self.p}

    def apply(self, x: torch.Tensor, params: Params, key: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def select(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.where(params["on"].view(-1, 1, 1, 1), self.apply(x, params), x)


def take(params: Params, index: torch.Tensor) -> Params:
    """The parameters of the samples `index`, in that order."""
    return {name: value[index] for name, value in params.items()}
