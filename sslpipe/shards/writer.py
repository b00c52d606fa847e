"""Write one WebDataset shard and its DALI index, atomically and byte-reproducibly.

A shard is written as `.<name>.tar.tmp` / `.<name>.idx.tmp` and renamed when complete, index
first: a `<name>.tar` on disk therefore always has its complete index beside it, and a killed converter
leaves only complete shards (plus temporary files that the next run removes). Tar headers carry
no time or owner, so the same samples always give the same bytes.

The index is the `v1.2` format of DALI's `wds2idx` tool: one line per sample listing
`ext offset size name` for each member, offsets pointing at the member's data. It is written
from the offsets known while writing, so no second pass over the tar is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from sslpipe.shards.sources import MAX_KEY

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records about a finished shard."""

    name: str        # "train-000000.tar"
    index: str       # "train-000000.idx"
    samples: int
    bytes: int
    sha256: str


class _HashingFile(io.RawIOBase):
    """A write-only file that also counts and hashes what passes through it."""

    def __init__(self, file):
        self.file, self.sha256, self.position = file, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, data):
        self.file.write(data)
        self.sha256.update(data)
        self.position += len(data)
        return len(data)

    def tell(self):
        return self.position


class ShardWriter:
    """Collects samples into `directory/<name>.tar` + `.idx`: `add` them, `finish` the files under
    their temporary names, record the returned ShardInfo, and `publish`.

    A sample is a key (no dots: readers split member names at the first dot) and a dict
    `{ext: bytes}` written in the given order.
    """

    def __init__(self, directory: Path, name: str):
        self.directory, self.name = Path(directory), name
        self.tar_path = self.directory / f"{name}.tar"
        self.idx_path = self.directory / f"{name}.idx"
        self._tmp_tar = self.directory / f".{name}.tar.tmp"
        self._tmp_idx = self.directory / f".{name}.idx.tmp"
        self._file = open(self._tmp_tar, "wb")
        self._stream = _HashingFile(self._file)
        # Plain ustar headers only (keys are short): readers that parse the tar themselves, DALI
        # without an index among them, mishandle the extended headers of other formats.
        self._tar = tarfile.open(fileobj=self._stream, mode="w", format=tarfile.USTAR_FORMAT)
        self._index_lines: list[str] = []

    @property
    def samples(self) -> int:
        return len(self._index_lines)

    @property
    def bytes(self) -> int:
        return self._stream.position

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key or not key or len(key) > MAX_KEY:
            raise ValueError(f"invalid sample key {key!r}: must be 1 to {MAX_KEY} characters, "
                             "without '.' or '/'")
        entries = []
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            self._tar.addfile(info, io.BytesIO(data))
            # addfile leaves `offset` at the end of the data padded to 512-byte blocks.
            data_offset = self._tar.offset - _padded(len(data))
            entries.append(f"{ext} {data_offset} {len(data)} {info.name}")
        self._index_lines.append(" ".join(entries))

    def finish(self) -> ShardInfo:
        """Complete both files under their temporary names; `publish` then makes them visible."""
        self._tar.close()
        _sync_close(self._file)
        with open(self._tmp_idx, "w") as idx:
            idx.write(f"{INDEX_VERSION} {len(self._index_lines)}\n")
            idx.writelines(line + "\n" for line in self._index_lines)
            idx.flush()
            os.fsync(idx.fileno())
        return ShardInfo(self.tar_path.name, self.idx_path.name, self.samples,
                         self._stream.position, self._stream.sha256.hexdigest())

    def publish(self) -> None:
        """Move the index, then the tar, to their final names."""
        os.replace(self._tmp_idx, self.idx_path)
        os.replace(self._tmp_tar, self.tar_path)

    def abort(self) -> None:
        """Drop the unfinished shard (used when conversion stops with an error). Never raises: it
        runs while an error is on its way, which must not be replaced by another."""
        # Closing flushes the buffered tail, which fails again on a full disk; the descriptor is
        # closed all the same, and the data is being dropped anyway.
        with contextlib.suppress(OSError):
            self._file.close()
        for path in (self._tmp_tar, self._tmp_idx):
            with contextlib.suppress(OSError):  # what stays is removed by the next run
                path.unlink(missing_ok=True)


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _sync_close(file) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


def read_index(path: Path) -> list[list[tuple[str, int, int, str]]]:
    """Parse a DALI `v1.2` index into samples of `(ext, offset, size, name)` members."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith(INDEX_VERSION + " "):
        raise ValueError(f"{path}: not a DALI {INDEX_VERSION} index file")
    samples = []
    for line in lines[1:]:
        fields = line.split()
        samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                        for i in range(0, len(fields), 4)])
    if int(lines[0].split()[1]) != len(samples):
        raise ValueError(f"{path}: header says {lines[0].split()[1]} samples, found {len(samples)}")
    return samples
