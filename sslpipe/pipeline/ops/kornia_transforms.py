"""Kornia as the extension library: any `kornia.augmentation` 2D transform, by name, in a view.

    views:
      - name: global
        ...
        kornia:
          - RandomPosterize: {bits: 3, p: 0.2}
          - RandomEqualize: {p: 0.1}
          - RandomErasing                    # its defaults

They run on the device after the table's ops (jitter, grayscale, blur, solarize) and before the
normalization, on values in [0, 1], in the listed order, on each view's rows of its stage. Kornia
draws its per-sample parameters from torch's global generators; here every transform runs inside
a forked RNG seeded from the batch's seed, the view and the transform's place in the list, so a
batch's Kornia draws are fixed by (seed, epoch, rank, batch) and resume exactly, and the global
generators are left as they were. Kornia draws on the CPU and moves its parameters to the device:
these transforms may synchronise with the host, unlike the table's ops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sslpipe import seeds
from sslpipe.errors import SslpipeError


@dataclass(frozen=True)
class KorniaTransform:
    """A `kornia.augmentation` transform: its class name and keyword arguments (YAML values, lists
    as tuples)."""

    name: str
    args: tuple[tuple[str, object], ...] = ()

    def build(self) -> torch.nn.Module:
        return _transform_class(self.name)(**dict(self.args))

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args)})"


def parse_kornia(value: object, where: str, source: str) -> tuple[KorniaTransform, ...]:
    """`[Name, {Name: {arg: value}}, ...]` from YAML; each transform is built once to check it."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SslpipeError(f"{source}: {where}: expected a list of Kornia transforms, e.g. "
                           f"[RandomPosterize: {{bits: 3, p: 0.2}}], got {value!r}")
    transforms = []
    for i, entry in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(entry, str):
            name, args = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            ((name, args),) = entry.items()
            args = {} if args is None else args
        else:
            raise SslpipeError(f"{source}: {at}: expected a transform name or {{Name: {{arg: value}}}}, "
                               f"got {entry!r}")
        if not isinstance(args, dict):
            raise SslpipeError(f"{source}: {at}.{name}: the arguments must be a mapping, got {args!r}")
        try:
            transform = KorniaTransform(str(name), tuple((str(k), _hashable(v)) for k, v in args.items()))
            transform.build()
        except SslpipeError as e:
            raise SslpipeError(f"{source}: {at}: {e}") from None
        except Exception as e:  # Kornia's own checks: a TypeError for a wrong argument, a ValueError, ...
            raise SslpipeError(f"{source}: {at}: kornia.augmentation.{name} refused its arguments: "
                               f"{type(e).__name__}: {e}") from None
        transforms.append(transform)
    return tuple(transforms)


class KorniaStage:
    """The Kornia transforms of a stage's views, run on each view's rows."""

    def __init__(self, views: Sequence, batch_size: int, size: int, device: torch.device):
        self.batch_size, self.device = batch_size, torch.device(device)
        self.transforms = [[(t, t.build().to(self.device)) for t in view.kornia] for view in views]
        probe = torch.rand(2, 3, size, size, device=self.device, generator=torch.Generator(self.device))
        for view, transforms in zip(views, self.transforms):
            for spec, module in transforms:
                try:
                    with seeded_rng(0, self.device):
                        shape = tuple(module(probe).shape)
                except Exception as e:  # Kornia's own checks on the input (a size, a dtype, ...)
                    raise ValueError(f"view {view.name!r}: kornia.augmentation.{spec} fails on a "
                                     f"{size}-px view: {type(e).__name__}: {e}") from None
                if shape != tuple(probe.shape):
                    raise ValueError(f"view {view.name!r}: kornia.augmentation.{spec} changes the view's "
                                     f"shape {tuple(probe.shape[1:])} to {shape[1:]}: only transforms "
                                     f"that keep it fit a view")

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """float32 (N, 3, H, W) in [0, 1] -> the same, each view's rows through its transforms."""
        for v, transforms in enumerate(self.transforms):
            if not transforms:
                continue
            rows = slice(v * self.batch_size, (v + 1) * self.batch_size)
            y = x[rows]
            for i, (spec, module) in enumerate(transforms):
                with seeded_rng(seeds.derive(seed, v, i, spec.name), self.device):
                    y = module(y)
            x[rows] = y
        return x


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global CPU generator (and `device`'s, on CUDA) seeded with `seed` inside, restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.default_generators[device.index or 0].manual_seed(seed)
        yield


def _transform_class(name: str) -> type:
    try:
        import kornia.augmentation as augmentation
    except ImportError as e:
        raise SslpipeError(f"Kornia transforms need kornia: pip install kornia ({e})") from None
    cls = getattr(augmentation, name, None)
    if not (isinstance(cls, type) and issubclass(cls, augmentation.AugmentationBase2D)):
        raise SslpipeError(f"{name!r} is not a 2D transform of kornia.augmentation (e.g. RandomPosterize, "
                           f"RandomEqualize, RandomErasing, RandomSharpness)")
    return cls


def _hashable(value):
    """YAML lists as tuples, so that a spec stays hashable and comparable."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        raise SslpipeError(f"a Kornia argument cannot be a mapping, got {value!r}")
    return value
