"""What a dataset layout hands to the converter: the files of one split, their keys and labels."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sslpipe.errors import SslpipeError


@dataclass(frozen=True)
class ClassInfo:
    index: int
    id: str                 # the wnid for ImageNet, the folder name for image folders
    name: str | None = None  # human-readable, where known


@dataclass(frozen=True)
class SourceFile:
    path: Path       # where to read it
    relpath: str     # relative to the dataset root, '/'-separated; recorded in the sample's .json
    key: str         # the sample's `__key__`: unique in the split, no dots
    label: int = -1  # class index; -1 = unlabeled
    class_id: str | None = None


@dataclass(frozen=True)
class Rejection:
    """A file found in the source and not written, with a short reason code and the details."""

    relpath: str
    reason: str
    detail: str

    def to_json(self) -> dict:
        """The line of `<split>.rejected.jsonl`."""
        return {"path": self.relpath, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict) -> Rejection:
        return cls(data["path"], data["reason"], data["detail"])


@dataclass
class SplitSource:
    """One split of a dataset, ready for conversion."""

    split: str                # "train", "val", ...
    directory: Path           # the folder scanned for the files
    description: dict         # dataset kind, layout and label source; recorded in the manifest
    class_field: str          # the name of the class id in the sample .json: "wnid" or "class"
    classes: list[ClassInfo]  # empty for an unlabeled split
    files: list[SourceFile]
    rejected: list[Rejection] = field(default_factory=list)  # found but unusable, e.g. no label
    hidden_ignored: int = 0   # hidden files and folders (.DS_Store, .cache/, ...), each counted once

    @property
    def found(self) -> int:
        return len(self.files) + len(self.rejected)


def list_files(directory: Path) -> tuple[list[Path], int]:
    """All files under `directory` in sorted order, and how many hidden entries were skipped.

    Every non-hidden file counts as found, whatever its extension, so that a stray non-image
    file is reported as rejected rather than silently passed over. Symbolic links to folders
    are followed (datasets are often assembled from links); a folder that cannot be listed or
    that is reached twice (a link loop) is an error rather than a silent gap.
    """
    def cannot_list(error: OSError):
        raise SslpipeError(f"cannot list {error.filename}: {error.strerror or error}")

    files, hidden, visited = [], 0, {}
    for parent, dirs, names in os.walk(directory, onerror=cannot_list, followlinks=True):
        status = os.stat(parent)
        first = visited.setdefault((status.st_dev, status.st_ino), parent)
        if first != parent:
            raise SslpipeError(f"{parent} is the folder {first} again (through a symbolic link); "
                               "each file must be reachable once")
        hidden += sum(name.startswith(".") for name in dirs + names)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(parent, name) for name in sorted(names) if not name.startswith(".")]
    return files, hidden


MAX_KEY = 90  # keeps `<key>.<ext>` within a plain ustar header's 100 characters


def make_key(text: str) -> str:
    """A `__key__` from a file stem or relative path.

    ASCII letters, digits, '_' and '-' stay; other ASCII symbols (dots, slashes, spaces) become
    '_'; other characters become `u<hex code>`, so that names in any script stay distinct.
    Overlong keys are cut and made unique by a hash of the full text.
    """
    key = "".join(c if re.fullmatch(r"[A-Za-z0-9_-]", c) else "_" if ord(c) < 128 else f"u{ord(c):x}"
                  for c in text)
    if len(key) > MAX_KEY:
        digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        key = f"{key[:MAX_KEY - 13]}_{digest}"
    return key


def check_unique_keys(split: str, files: list[SourceFile]) -> None:
    seen: dict[str, str] = {}
    for f in files:
        if f.key in seen:
            raise SslpipeError(
                f"{split}: files {seen[f.key]!r} and {f.relpath!r} both map to the sample key "
                f"{f.key!r}; rename one of them")
        seen[f.key] = f.relpath


def relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
