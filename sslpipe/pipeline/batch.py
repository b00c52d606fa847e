"""What a loader gives a training step: the views of B images, and what is known of each image.

    batch.views          [(B, 3, s_i, s_i)] in spec order
    batch.names          the spec's group name of each view ("global", "global", "local", ...)
    batch.groups         views of one size augmented as one tensor (SwAV's six 96-px crops)
    batch.labels         (B,) int64, -1 for unlabeled shards
    batch.index          (B,) int64: the global sample index, stable over epochs and rank layouts
    batch.keys           the samples' keys (computed on first access)
    batch.windows/flips  per view, the crop window and the flip (loaders made with `windows=True`)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class SizeGroup:
    """Views of one size, one tensor: `images` is (len(views) * B, 3, size, size), rows
    `[j*B:(j+1)*B]` being `Batch.views[views[j]]` (the same memory)."""

    size: int
    views: tuple[int, ...]
    images: torch.Tensor


@dataclass
class Batch:
    """One batch of B images (see the module's docstring). All tensors are on the loader's device."""

    views: list[torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor
    groups: list[SizeGroup]
    names: tuple[str, ...]
    # Per view: (B, 4) float32 (top, left, height, width) as fractions of the source image, and (B,)
    # bool flips; None unless the loader was made with windows=True.
    windows: list[torch.Tensor] | None = None
    flips: list[torch.Tensor] | None = None
    # The keys, or a function that looks them up (called on the first access of `keys`).
    _keys: Callable[[], list[str]] | list[str] = field(default_factory=list, repr=False)

    @property
    def size(self) -> int:
        """B, the number of images."""
        return self.labels.shape[0]

    @property
    def keys(self) -> list[str]:
        """The samples' keys, in batch order (looked up from the shard list on first access)."""
        if callable(self._keys):
            self._keys = self._keys()
        return self._keys

    def named(self, name: str) -> list[int]:
        """The positions in `views` of the spec's group `name`, in spec order."""
        return [i for i, n in enumerate(self.names) if n == name]

    def concat(self, views: Sequence[int]) -> torch.Tensor:
        """(len(views) * B, 3, s, s): the views at these positions, in this order; the size group's
        own tensor when they are exactly one group (no copy)."""
        views = tuple(views)
        for group in self.groups:
            if group.views == views:
                return group.images
        return torch.cat([self.views[i] for i in views])

    @classmethod
    def from_views(cls, views: Sequence[torch.Tensor], *, labels: torch.Tensor | None = None,
                   index: torch.Tensor | None = None, names: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> Batch:
        """A batch of views made elsewhere (tests, another loader): views of one size form a group
        (concatenated here, a copy); labels default to -1, the index to 0..B-1, names to "view"."""
        views = list(views)
        n, device = views[0].shape[0], views[0].device
        sizes: dict[int, list[int]] = {}
        for i, view in enumerate(views):
            sizes.setdefault(view.shape[-1], []).append(i)
        groups = [SizeGroup(size, tuple(members), torch.cat([views[i] for i in members]))
                  for size, members in sizes.items()]
        for group in groups:  # the views become slices of their group's tensor, as from the loader
            for j, i in enumerate(group.views):
                views[i] = group.images[j * n:(j + 1) * n]
        labels = torch.full((n,), -1, dtype=torch.int64, device=device) if labels is None else labels
        index = torch.arange(n, device=device) if index is None else index
        return cls(views=views, labels=labels, index=index, groups=groups,
                   names=tuple(names) if names is not None else ("view",) * len(views),
                   _keys=list(keys) if keys is not None else [str(i) for i in index.tolist()])
