"""The one contract every method keeps, and what the training loop passes to it.

A method is an `nn.Module` holding its backbone and heads:

    forward(batch, step) -> StepOutput(loss, metrics)

`batch` is the loader's `Batch` (views in spec order, size groups, labels, global sample index,
keys); `step` says where training is and carries this step's schedule values and a per-rank
generator, so a method keeps no counters and draws its randomness reproducibly. A method declares
the views it needs (`views_needed`), checked against the recipe's spec before the first step. The
loop calls the optional hooks below; shared parts (momentum encoder, feature queue, memory bank)
are composed from `sslpipe.methods.parts`, not inherited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslpipe import seeds
from sslpipe.methods.parts.state import Part
from sslpipe.methods.views import ViewsNeeded
from sslpipe.pipeline.batch import Batch

# What `on_epoch_start` gets: run a module over every training image (evaluation crop, eval mode,
# no gradient) and return (N, D) float32 features on the CPU, row i for global sample index i.
FeatureExtractor = Callable[[nn.Module], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """Where training is, and this step's values.

    `values` holds this step's schedule values by name: the loop's `lr` and `weight_decay` and the
    method's own (`Method.schedules`), e.g. `step["ema_momentum"]`. `generator` is a generator on
    `device` seeded from (seed, index, rank): different on every rank and step, the same after a
    resume. `seed` alone is the same on every rank (MoCo's shuffle-BN draws one permutation for all).
    """

    index: int = 0
    epoch: int = 0
    seed: int = 0
    rank: int = 0
    values: Mapping[str, float] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    def __getitem__(self, name: str) -> float:
        if name not in self.values:
            raise KeyError(f"no schedule value {name!r} at this step (there are: {', '.join(self.values)})")
        return self.values[name]

    @cached_property
    def generator(self) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seeds.derive(self.seed, self.index, self.rank))


@dataclass
class StepOutput:
    """The loss to minimize (a scalar, float32) and metrics to log: 0-dim tensors on the loss's
    device for what is computed (summed there, read once per log line), Python numbers for what
    the host knows (shapes, constants; a tensor made of one would be copied to the device each step)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Method(nn.Module):
    """Base of the methods: a backbone, heads, and the loss of one batch.

    Subclasses set `Config` (a frozen dataclass of the method's hyperparameters, the recipe's
    `method` section), and implement `views_needed` and `forward`. The loop constructs a method as
    `cls(backbone, config, *, global_batch: int, samples: int | None = None)`: `global_batch` the
    batch over all processes, `samples` the number of training samples over all shards (the range
    0..samples-1 of `batch.index`, the rows of a memory bank; None where unknown, e.g. in a unit
    test: a method that needs it refuses None with a ValueError). The other methods are hooks
    with defaults that do nothing; the loop calls them in this order each step: `forward`,
    backward, `before_optimizer_step`, the optimizer, `after_optimizer_step`; and
    `on_epoch_start(epoch, extract)` before an epoch's first step, then `artifacts`.
    """

    Config: type
    # Parameters (by name prefix) whose learning rate stays at its initial value (SimSiam's predictor).
    fixed_lr_prefixes: tuple[str, ...] = ()
    # A backbone (`sslpipe.models.BACKBONES`) it works with, where no recipe names one (`sslpipe preview`).
    example_backbone: str = "resnet18"

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def views_needed(self) -> ViewsNeeded:
        """What the method needs of the spec's views (checked before the first step)."""
        raise NotImplementedError

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        raise NotImplementedError

    def schedules(self, total_steps: int) -> dict[str, np.ndarray]:
        """The method's own per-step values by name, each (total_steps,): the loop passes
        `array[step]` in `Step.values` and logs it (e.g. BYOL's and MoCo's EMA momentum)."""
        return {}

    def before_optimizer_step(self, step: Step) -> None:
        """After backward, before the update (SwAV drops its prototypes' gradient here)."""

    def after_optimizer_step(self, step: Step) -> None:
        """After the update (BYOL moves its target network here)."""

    def preview(self, batch: Batch, step: Step) -> list[list[tuple[str, torch.Tensor]]] | None:
        """What the method makes of `batch` (views not normalized) before its backbone sees it, for
        `sslpipe preview --method`: per image, cells of (caption, (C, H, W) image in [0, 1]).
        None: the views as they come (the instance methods; `sslpipe preview SPEC` shows them)."""
        return None

    def artifacts(self) -> dict[str, np.ndarray]:
        """Arrays to keep beside the run, by name: the loop writes each as `<run>/<name>.npy` after
        `on_epoch_start` (colorization's prior). Their values belong in the method's state too."""
        return {}

    def on_epoch_start(self, epoch: int, extract: FeatureExtractor) -> None:
        """Before the first step of `epoch` (DeepCluster re-clusters here); `extract(module)` gives
        features of every training image. Not called when a run resumes mid-epoch: what it
        computes belongs in the method's state (a buffer), which the checkpoint restores."""

    # State outside the model's state dict, and state DDP must not broadcast.

    def rank_state_dict(self) -> dict:
        """The state that differs between processes: every per-rank part's (`parts.state`)."""
        return {name: part.rank_state_dict() for name, part in self._parts() if part.per_rank}

    def load_rank_state_dict(self, state: dict) -> None:
        parts = {name: part for name, part in self._parts() if part.per_rank}
        if set(parts) != set(state):
            raise ValueError(f"the saved per-process state holds {sorted(state)}, this method has "
                             f"{sorted(parts)}")
        for name, part in parts.items():
            part.load_rank_state_dict(state[name])

    def unsynced_buffers(self) -> list[str]:
        """Buffers DDP must not broadcast from rank 0: the parts' (identical on every rank by
        construction, or per rank; e.g. a 650 MB memory bank)."""
        return [f"{name}.{buffer}" for name, part in self._parts()
                for buffer, _ in part.named_buffers(recurse=False)]

    def _parts(self):
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Part)]


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor (SimSiam, Sec. 4.1): std over the batch of l2-normalized (N, D) embeddings,
    averaged over dimensions. About 1/sqrt(D) when healthy, 0 when collapsed to a point."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def health_metrics(z: torch.Tensor) -> dict[str, torch.Tensor | float]:
    """`embedding_std` of (N, D) embeddings (a 0-dim tensor) and its healthy reference 1/sqrt(D)
    (a float)."""
    return {"embedding_std": embedding_std(z), "embedding_std_ref": z.shape[1] ** -0.5}


def encode_groups(encoder: nn.Module, batch: Batch) -> list[torch.Tensor]:
    """`encoder` on every view, one call per size group of the batch (SwAV's multi-crop: one for
    the 224s, one for the 96s; views of one size whose ops need other static settings, such as two
    blur kernel sizes, form groups of their own); returns one (B, F) tensor per view, in view order."""
    outputs: list[torch.Tensor | None] = [None] * len(batch.views)
    for group in batch.groups:
        for i, features in zip(group.views, encoder(group.images).chunk(len(group.views))):
            outputs[i] = features
    return outputs
