"""What a dataset layout hands to the converter: the files of one split, their keys and labels."""

from __future__ import annotations

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


@dataclass
class SplitSource:
    """One split of a dataset, ready for conversion."""

    split: str                # "train", "val", ...
    description: dict         # dataset kind, layout and label source; recorded in the manifest
    class_field: str          # the name of the class id in the sample .json: "wnid" or "class"
    classes: list[ClassInfo]  # empty for an unlabeled split
    files: list[SourceFile]
    rejected: list[Rejection] = field(default_factory=list)  # found but unusable, e.g. no label
    hidden_ignored: int = 0   # dot-files (.DS_Store, ...) that are not dataset files

    @property
    def found(self) -> int:
        return len(self.files) + len(self.rejected)


def list_files(directory: Path) -> tuple[list[Path], int]:
    """All regular files under `directory` in sorted order, and how many hidden files were skipped.

    Every non-hidden file counts as found, whatever its extension, so that a stray non-image
    file is reported as rejected rather than silently passed over.
    """
    files, hidden = [], 0
    for parent, dirs, names in os.walk(directory):
        hidden += sum(name.startswith(".") for name in dirs + names)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(parent, name) for name in sorted(names) if not name.startswith(".")]
    return files, hidden


def make_key(text: str) -> str:
    """A `__key__` from a file stem or relative path: dots, slashes and other symbols become '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


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
