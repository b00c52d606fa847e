"""The shards a loader reads: expand the pattern, check the index files, count the samples.

Everything DALI would otherwise fail on late, and deep inside its threads, is checked here
before the pipeline starts, with the shard and key named: a missing index, an index that does
not match its tar, a sample without an image or a label.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from webdataset.shardlists import expand_urls

from sslpipe.errors import SslpipeError
from sslpipe.shards.writer import read_index

REQUIRED = ("jpg", "cls")


@dataclass(frozen=True)
class Shard:
    """One tar shard, its DALI index, and its samples' keys and `.jpg` offsets in tar order."""

    path: Path
    index: Path
    keys: tuple[str, ...]
    offsets: tuple[int, ...]   # byte offset of each sample's .jpg data in the tar (DALI's source_info)

    def __len__(self) -> int:
        return len(self.keys)


class SampleIndex:
    """The global sample index over a list of shards: a sample's position in the concatenation of
    the shards in the order given (a pattern's matches in sorted order). The same in every epoch
    and for any number of ranks, since it depends on the shard list alone."""

    def __init__(self, shards: Sequence[Shard]):
        self.shards = list(shards)
        self.starts = np.cumsum([0, *(len(s) for s in self.shards)])
        self._ordinal = {str(s.path): i for i, s in enumerate(self.shards)}
        self._offsets = [np.asarray(s.offsets, dtype=np.int64) for s in self.shards]
        # Every sample as one int64 key, ordinal * stride + offset (offsets < stride), sorted, so
        # that a batch's sources are found with one searchsorted: (N,) keys and (N,) indices.
        self._stride = 1 + max((int(o.max()) for o in self._offsets if len(o)), default=0)
        keys = np.concatenate([np.zeros(0, np.int64),
                               *(i * self._stride + o for i, o in enumerate(self._offsets))])
        self._order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._order]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def of_source(self, source: str) -> int:
        """The index of the sample DALI describes as `shard.tar:offset:member`."""
        if source.count(":") < 2:
            raise _no_sample(source)
        path, offset, member = source.rsplit(":", 2)
        ordinal = self._ordinal.get(path)
        offsets = self._offsets[ordinal] if ordinal is not None else None
        offset = int(offset) if offset.isascii() and offset.isdecimal() and len(offset) < 19 else -1
        position = int(np.searchsorted(offsets, offset)) if offsets is not None else -1
        if offsets is None or position >= len(offsets) or offsets[position] != offset:
            raise _no_sample(source)
        return int(self.starts[ordinal]) + position

    def of_sources(self, rows: np.ndarray) -> np.ndarray:
        """(B,) int64: `of_source` of every row of `rows`, (B, W) uint8, each a source string
        `shard.tar:offset:member` zero-padded on the right (DALI's padded `source_info`)."""
        width = rows.shape[1]
        middle, last, split = _last_two(rows, ord(":"))  # a path may hold ':' itself, a member not
        offsets, numeric = _decimal(rows, middle + 1, last)
        # The few distinct shard paths of a batch: each row's path, NUL-filled to W, as one value.
        paths = np.where(np.arange(width) < middle[:, None], rows, 0)
        unique, inverse = np.unique(paths.view(f"V{width}").ravel(), return_inverse=True)
        ordinals = np.array([self._ordinal.get(os.fsdecode(u.tobytes().rstrip(b"\0")), -1) for u in unique],
                            dtype=np.int64)[inverse.ravel()]
        keys = ordinals * self._stride + offsets
        found = numeric & split & (ordinals >= 0) & (offsets < self._stride)
        at = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        found &= self._sorted_keys[at] == keys
        if not found.all():
            raise _no_sample(os.fsdecode(rows[int(np.argmin(found))].tobytes().rstrip(b"\0")))
        return self._order[at]

    def locate(self, index: int) -> tuple[Shard, int]:
        """The shard holding sample `index`, and its position there."""
        ordinal = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.shards[ordinal], index - int(self.starts[ordinal])

    def keys(self, indices) -> list[str]:
        """The samples' keys, in the order of `indices`."""
        return [shard.keys[position] for shard, position in map(self.locate, np.asarray(indices).tolist())]


def _no_sample(source: str) -> SslpipeError:
    path, offset, member = source.rsplit(":", 2) if source.count(":") >= 2 else (source, "?", "?")
    return SslpipeError(f"{path}: DALI read {member} at byte {offset}, which is no sample of "
                        f"the shard list (was the shard rewritten since the loader started?)")


# The bytes int() strips around a number (ASCII whitespace); on the right also NUL, DALI's padding.
_BLANK = np.zeros(256, dtype=bool)
_BLANK[list(b" \t\n\v\f\r")] = True
_PADDED = _BLANK.copy()
_PADDED[0] = True
_POWERS = 10 ** np.arange(19, dtype=np.int64)  # units first; int64 holds any 18-digit decimal
_INT64 = range(-2**63, 2**63)


def cls_values(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) int64 labels from `rows` (B, W) uint8, each a `.cls` zero-padded on the right, and (B,)
    bool: which rows are an integer as `int()` reads one (ASCII digits after an optional sign,
    whitespace around) that int64 holds. Trailing NULs are taken for padding. Unlabeled shards hold -1.

    Up to 18 digits are parsed here for the whole batch at once; the rows that are not (19 digits
    or more, leading zeros included, or `_` between digits) are then read by `int()` one by one,
    so that every row is either `int()`'s value or flagged, never another number."""
    values, ok = np.zeros(len(rows), np.int64), np.zeros(len(rows), bool)
    if rows.shape[1]:  # else every .cls of the batch is empty
        first = np.argmax(~_BLANK[rows], axis=1)  # a blank row: its "digits" are blanks or NUL, not ok
        stop = rows.shape[1] - np.argmax(~_PADDED[rows][:, ::-1], axis=1)
        sign = rows[np.arange(len(rows)), first]
        negative = sign == ord("-")
        values, ok = _decimal(rows, first + (negative | (sign == ord("+"))), stop)
        values = np.where(negative, -values, values)
    for j in np.flatnonzero(~ok):  # rare: not an integer (the loader then stops), or a long one
        try:
            value = int(rows[j].tobytes().rstrip(b"\0"))
        except ValueError:
            continue
        if value in _INT64:
            values[j], ok[j] = value, True
    return values, ok


def _last_two(rows: np.ndarray, byte: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B,) columns of the second-last and the last `byte` in each row of `rows` (B, W), and (B,)
    bool: which rows have two."""
    found, at = rows == byte, np.arange(len(rows))
    last = rows.shape[1] - 1 - np.argmax(found[:, ::-1], axis=1)
    two = found[at, last]
    found[at, last] = False
    middle = rows.shape[1] - 1 - np.argmax(found[:, ::-1], axis=1)
    return middle, last, two & found[at, middle]


def _decimal(rows: np.ndarray, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) int64 values of the decimals `rows[i, start[i]:stop[i]]` of `rows` (B, W) uint8, and (B,)
    bool: which are 1 to 18 ASCII digits. Reads the 19 columns left of each stop, a (B, 19) gather."""
    length, places = stop - start, np.arange(len(_POWERS))
    at = np.maximum(stop[:, None] - 1 - places, 0) + rows.shape[1] * np.arange(len(rows))[:, None]
    digits = np.ascontiguousarray(rows).ravel().take(at) - np.uint8(ord("0"))  # below '0' wraps past 9
    digits *= places < length[:, None]
    ok = (length >= 1) & (length < len(_POWERS))
    if (digits > 9).any():  # rare, so checked per row only then
        ok &= (digits <= 9).all(axis=1)
    return digits @ _POWERS, ok


def resolve_shards(shards: str | Path | list) -> list[Shard]:
    """Shards from a glob or brace pattern (`out/train-*.tar`, `out/train-{000000..000009}.tar`),
    or a list of tar paths; every shard must have its `.idx` and hold `.jpg` and `.cls` per sample.
    A list of `Shard`s is returned as it is (already resolved: the training loop's check of its
    inputs hands its result to the loader, so that the indexes are read once)."""
    if isinstance(shards, (list, tuple)) and shards and all(isinstance(s, Shard) for s in shards):
        return list(shards)
    patterns = [str(shards)] if isinstance(shards, (str, Path)) else [str(s) for s in shards]
    if not patterns:
        raise SslpipeError("no shards given: pass a pattern such as 'shards/train-*.tar'")
    paths = []
    for pattern in patterns:
        for expanded in expand_urls(pattern):  # braces, '::' lists
            if Path(expanded).is_dir():
                splits = sorted(p.name.removesuffix(".manifest.json")
                                for p in Path(expanded).glob("*.manifest.json"))
                example = Path(expanded) / f"{splits[0] if splits else 'train'}-*.tar"
                raise SslpipeError(f"{expanded} is a folder: give a shard pattern such as '{example}'"
                                   + (f" (splits there: {', '.join(splits)})" if splits else ""))
            matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            if not matches or not Path(matches[0]).exists():
                raise SslpipeError(f"no shards match {expanded!r}")
            paths += [Path(m) for m in matches]
    if len(set(paths)) != len(paths):
        raise SslpipeError(f"a shard is listed twice in {shards!r}: every sample would be read twice")
    resolved = [_shard(p) for p in paths]
    if sum(len(s) for s in resolved) == 0:
        raise SslpipeError(f"the shards matching {shards!r} hold no samples")
    return resolved


def _shard(path: Path) -> Shard:
    if path.suffix != ".tar" or not path.is_file():
        raise SslpipeError(f"{path}: not a .tar shard")
    index = path.with_suffix(".idx")
    if not index.is_file():
        raise SslpipeError(
            f"{path}: no DALI index {index.name} beside it. sslpipe convert writes one; for shards made "
            f"elsewhere run DALI's `wds2idx {path} {index}` (installed with nvidia-dali)")
    try:
        samples = read_index(index)
    except (OSError, ValueError, IndexError) as e:
        raise SslpipeError(f"{index}: unreadable DALI index ({e}); rebuild it with `wds2idx {path} {index}`")
    last_byte = max((offset + size for sample in samples for _, offset, size, _ in sample), default=0)
    if last_byte > path.stat().st_size:
        raise SslpipeError(f"{index} does not match {path} (the tar is shorter than the index says): "
                           f"run `sslpipe verify` on the folder")
    keys, offsets = [], []
    for sample in samples:
        key = sample[0][3].split(".", 1)[0] if sample else "?"
        present = {ext: offset for ext, offset, *_ in sample}
        missing = [ext for ext in REQUIRED if ext not in present]
        if missing:
            raise SslpipeError(f"{path}: sample {key!r} has no .{missing[0]} (each sample needs "
                               f"{' and '.join('.' + e for e in REQUIRED)})")
        keys.append(key)
        offsets.append(present["jpg"])
    return Shard(path, index, tuple(keys), tuple(offsets))


def rank_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """The samples `[start, stop)` of the concatenated shards that DALI's reader gives `rank`.

    DALI splits the sample sequence into contiguous parts (`start = total * rank // world_size`).
    """
    return total * rank // world_size, total * (rank + 1) // world_size


def read_images(shard: Shard, start: int = 0, stop: int | None = None) -> list[tuple[str, bytes]]:
    """[(key, .jpg bytes)] of the samples `[start, stop)` of `shard`, read through its index."""
    samples = read_index(shard.index)[start:stop]
    images = []
    with open(shard.path, "rb") as f:
        for key, sample in zip(shard.keys[start:], samples):
            _, offset, size, _ = next(m for m in sample if m[0] == "jpg")
            f.seek(offset)
            images.append((key, f.read(size)))
    return images
