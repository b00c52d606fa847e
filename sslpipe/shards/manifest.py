"""`OUT/<split>.manifest.json`: the record of a finished split, read by `verify` and the loaders.

It exists only once every shard of the split is written; while a conversion runs (or after it
was killed) its state lives in `OUT/.<split>.progress.json` instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from sslpipe.errors import SslpipeError

FORMAT = "sslpipe-shards/1"
SHARD_KEYS = {"name", "index", "samples", "bytes", "sha256"}


def manifest_path(out: Path, split: str) -> Path:
    return Path(out) / f"{split}.manifest.json"


def rejected_path(out: Path, split: str) -> Path:
    return Path(out) / f"{split}.rejected.jsonl"


def progress_path(out: Path, split: str) -> Path:
    return Path(out) / f".{split}.progress.json"


@dataclass
class Manifest:
    split: str
    source: dict            # dataset, layout, where the labels came from
    options: dict           # everything that changes the bytes written
    fingerprint: str        # sha256 of the source files' keys, paths, sizes, times and labels
    class_field: str        # name of the class id in each sample's .json and in `classes`
    classes: list[dict]     # [{"index": 0, <class_field>: "n01440764", "name": "tench, ..."}]
    shards: list[dict]      # [{"name", "index", "samples", "bytes", "sha256"}]
    totals: dict            # found, written, rejected, bytes, kept, reencoded, rejected_by_reason, ...
    format: str = FORMAT
    created_by: str = ""

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise SslpipeError(f"cannot read manifest {path}: {e.strerror or e}") from e
        except json.JSONDecodeError as e:
            raise SslpipeError(f"manifest {path} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SslpipeError(f"{path} is not an sslpipe shard manifest (format {FORMAT!r})")
        try:
            manifest = cls(**data)
        except TypeError as e:
            raise SslpipeError(f"manifest {path} has unexpected or missing keys: {e}") from e
        for number, shard in enumerate(manifest.shards):
            missing = SHARD_KEYS - set(shard) if isinstance(shard, dict) else SHARD_KEYS
            if missing:
                raise SslpipeError(f"manifest {path}: shard {number} lacks {', '.join(sorted(missing))}")
        for number, entry in enumerate(manifest.classes):
            valid = isinstance(entry, dict) and manifest.class_field in entry
            if not valid or entry.get("index") != number:
                raise SslpipeError(f"manifest {path}: class {number} must be "
                                   f"{{\"index\": {number}, \"{manifest.class_field}\": ...}}")
        return manifest


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old content or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def find_manifests(out: Path) -> list[Path]:
    return sorted(Path(out).glob("*.manifest.json"))
