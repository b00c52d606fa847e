"""Class-balanced label subsets for semi-supervised evaluation (the 1% and 10% protocols).

    indices = balanced_subset(labels, 0.01, seed=0)             # ~13 images per ImageNet class
    pattern = write_subset_shards("shards/train-*.tar", {keys[i] for i in indices}, Path("subsets"),
                                  name="train_1pct")

The subsets are drawn here, from a seed; results meant to be compared with published 1% / 10%
numbers should use the published image lists (SimCLR's) instead, through `write_subset_shards`.
"""

from __future__ import annotations

import math
import re
import tarfile
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.shardlist import resolve_shards
from sslpipe.shards.writer import ShardWriter


def balanced_subset(labels: Sequence[int] | Tensor, fraction: float, seed: int = 0) -> list[int]:
    """Sorted indices into `labels` of `round(fraction * count_c)` samples of every class c.

    Rounding is half up, with at least one sample per class, so that no class disappears from a
    small subset. Each class's members are put in one random order, drawn from
    `numpy.random.default_rng(seed)` class by class in increasing label order, and the subset
    takes a prefix of it: the draw does not depend on `fraction`, so for one seed the subsets
    are nested (the 1% subset lies inside the 10% one), and the same (labels, fraction, seed)
    always gives the same subset.

    Args:
        labels: (N,) class indices >= 0.
        fraction: in (0, 1].
        seed: a non-negative integer.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise SslpipeError(f"fraction must be a number in (0, 1], got {fraction!r}")
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if labels.ndim != 1 or labels.size == 0 or labels.dtype.kind not in "iu":
        raise SslpipeError(f"labels must be a non-empty list of class indices, got shape {labels.shape} "
                           f"of {labels.dtype}")
    if labels.min() < 0:
        raise SslpipeError("labels must be >= 0: unlabeled samples (label -1) cannot be balanced")
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed)
    chosen = []
    for start, count in zip(starts, counts):
        take = max(1, math.floor(fraction * count + 0.5))
        chosen.append(order[start:start + count][rng.permutation(count)[:take]])
    return np.sort(np.concatenate(chosen)).tolist()


def write_subset_shards(shards: str | list, keys: Collection[str], out_dir: Path, name: str = "subset", *,
                        shard_samples: int = 1000) -> str:
    """Copy the samples whose key is in `keys` into `out_dir/<name>-NNNNNN.{tar,idx}`.

    Every member of a chosen sample is copied with its bytes unchanged; samples keep the order of
    the input shards. A sample's key is its member names' basename up to the first '.'.

    Args:
        shards: a pattern or list of input shards, as `ViewLoader` takes them (indexed).
        keys: the samples to copy; every one must be in the shards.
        out_dir: created if needed; must not already hold `<name>-*` shards.
        shard_samples: samples per output shard.

    Returns:
        The glob pattern of the written shards, `"<out_dir>/<name>-*.tar"`.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SslpipeError(f"name {name!r} must be letters, digits or '_' (it names the files)")
    if shard_samples < 1:
        raise SslpipeError(f"shard_samples must be >= 1, got {shard_samples}")
    wanted = set(keys)
    if not wanted:
        raise SslpipeError("no keys given: the subset would be empty")
    inputs = resolve_shards(shards)
    missing = sorted(wanted.difference(*(shard.keys for shard in inputs)))
    if missing:
        raise SslpipeError(f"{len(missing)} of the {len(wanted)} keys are not in the shards {shards!r}, "
                           f"e.g. {', '.join(missing[:5])}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Stale shards would match the returned pattern and be read with the new ones.
    if any(out_dir.glob(f"{name}-*.tar")) or any(out_dir.glob(f"{name}-*.idx")):
        raise SslpipeError(f"{out_dir} already holds {name}-* shards: remove them or choose another name")

    writer, published, written = None, [], set()
    try:
        for shard in inputs:
            for key, members in _read_samples(shard.path, wanted):
                if key in written:
                    raise SslpipeError(f"{shard.path}: sample {key!r} appears a second time in the shards")
                if writer is None:
                    writer = ShardWriter(out_dir, f"{name}-{len(published):06d}")
                writer.add(key, members)
                written.add(key)
                if writer.samples >= shard_samples:
                    published.append(_publish(writer))
                    writer = None
        if writer is not None:
            published.append(_publish(writer))
    except BaseException:
        # All or nothing: a partial subset left behind would read as a smaller subset.
        if writer is not None:
            writer.abort()
        for done in published:
            done.tar_path.unlink(missing_ok=True)
            done.idx_path.unlink(missing_ok=True)
        raise
    return str(out_dir / f"{name}-*.tar")


def _publish(writer: ShardWriter) -> ShardWriter:
    writer.finish()
    writer.publish()
    return writer


def _read_samples(path: Path, wanted: set[str]) -> list[tuple[str, dict[str, bytes]]]:
    """[(key, {ext: bytes})] of the samples of one tar whose key is wanted, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
                if member.isfile() and key in wanted:
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError) as e:
        raise SslpipeError(f"{path}: unreadable tar shard ({e}); run `sslpipe verify` on its folder") from e
    return list(samples.items())
