"""Convert one split of a dataset into shuffled, indexed WebDataset shards.

    files --sort by key, shuffle(seed)--> plan --prepare_in_order (N workers)--> shards

DALI's reader shuffles only inside a small buffer while it reads the tars in sequence, so the
global shuffle happens here. Samples fill the shards in plan order; each shard is written under
a temporary name, recorded in `.<split>.progress.json` with how far the plan got, and then
renamed. A re-run of the same command resumes after the last complete shard; since every step
is deterministic, the result is byte-identical to an uninterrupted run, whatever the worker
count.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import random
import re
import time
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from sslpipe import __version__
from sslpipe.errors import SslpipeError, describe_os_error
from sslpipe.shards.images import ImagePolicy, Prepared
from sslpipe.shards.manifest import Manifest, manifest_path, progress_path, rejected_path, write_atomic
from sslpipe.shards.resume import (
    existing_conversion,
    remove_split,
    remove_temporary,
    remove_uncommitted,
    writable_folder,
)
from sslpipe.shards.sources import Rejection, SourceFile, SplitSource
from sslpipe.shards.workers import prepare_in_order
from sslpipe.shards.writer import ShardWriter


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that changes the bytes written; recorded in the manifest."""

    seed: int = 0
    shard_samples: int | None = 1000        # close a shard at this many samples ...
    shard_bytes: int | None = 256 * 2**20   # ... or before it would grow past this many bytes
    image: ImagePolicy = ImagePolicy()

    def __post_init__(self):
        for name in ("shard_samples", "shard_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SslpipeError(f"{name} must be at least 1 (got {value})")
        if self.shard_samples is None and self.shard_bytes is None:
            raise SslpipeError("give a shard size: shard_samples, shard_bytes or both")
        if not 1 <= self.image.quality <= 100:
            raise SslpipeError(f"quality must be within 1..100 (got {self.image.quality})")
        for name in ("short_side", "max_side"):
            value = getattr(self.image, name)
            if value is not None and value < 1:
                raise SslpipeError(f"{name} must be at least 1 pixel (got {value})")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Segment:
    """What became of the source files that one shard covers (saved with the shard's record)."""

    kept: int = 0
    reencoded: Counter = field(default_factory=Counter)   # reason -> files
    labels: Counter = field(default_factory=Counter)      # class index -> samples written
    rejected: list[Rejection] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"kept": self.kept, "reencoded": dict(self.reencoded),
                "labels": {str(k): v for k, v in sorted(self.labels.items())},
                "rejected": [r.to_json() for r in self.rejected]}

    @classmethod
    def from_json(cls, data: dict) -> _Segment:
        return cls(data["kept"], Counter(data["reencoded"]),
                   Counter({int(k): v for k, v in data["labels"].items()}),
                   [Rejection.from_json(r) for r in data["rejected"]])


@dataclass(frozen=True)
class ConvertResult:
    manifest: Manifest
    resumed_from: int = 0      # shards found complete at the start of this run
    processed: int = 0         # source files read by this run
    seconds: float = 0.0
    already_done: bool = False


def convert_split(source: SplitSource, out: Path, options: ConvertOptions = ConvertOptions(), *,
                  workers: int = 1, overwrite: bool = False, progress: bool = True) -> ConvertResult:
    """Write `out/<split>-NNNNNN.{tar,idx}`, `<split>.rejected.jsonl` and `<split>.manifest.json`."""
    split = source.split
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise SslpipeError(f"split name {split!r} must be letters, digits or '_' (it names the files)")
    if Path(out).resolve().is_relative_to(source.directory.resolve()):
        raise SslpipeError(f"the output folder {out} must not be inside {source.directory}, which is "
                           "scanned for source files")
    out = writable_folder(Path(out))
    plan = shuffled_plan(source.files, options.seed)
    header = {"source": source.description, "options": options.as_dict(),
              "fingerprint": fingerprint(plan)}
    if overwrite:
        remove_split(out, split)

    existing = existing_conversion(out, split, header)
    if isinstance(existing, Manifest):
        return ConvertResult(existing, resumed_from=len(existing.shards), already_done=True)
    remove_uncommitted(out, split, len(existing))
    shards = _ShardSequence(out, split, header, options, records=existing)

    start, todo = time.perf_counter(), plan[shards.plan_end:]
    bar = tqdm(total=len(plan), initial=shards.plan_end, unit="img", desc=f"converting {split}",
               disable=not progress, dynamic_ncols=True)
    try:
        shards.save()
        with closing(prepare_in_order([f.path for f in todo], options.image, workers)) as results:
            for position, (file, result) in enumerate(zip(todo, results), start=shards.plan_end):
                if isinstance(result, Prepared):
                    shards.add(position, file, _sample_members(file, result, source.class_field),
                               result.reencoded)
                else:
                    shards.segment.rejected.append(Rejection(file.relpath, result.reason, result.detail))
                bar.update()
        trailing = shards.close(len(plan))
        manifest = _finish(out, source, header, shards.records, trailing)
    except OSError as e:  # reading errors are rejections; this is writing the output
        unfinished = shards.abort()
        raise SslpipeError(_write_failure(e, out, shards.records, unfinished)) from e
    except BaseException:
        shards.abort()
        raise
    finally:
        bar.close()
    return ConvertResult(manifest, len(existing), processed=len(todo), seconds=time.perf_counter() - start)


def _write_failure(error: OSError, out: Path, records: list[dict], unfinished: str | None) -> str:
    """One line for a failed write: what failed, what is kept, and that the same command resumes."""
    # Kept: the recorded shards that were published (a failure may come between the two).
    kept = [r for r in records if (out / r["name"]).is_file()]
    if kept:
        names = kept[0]["name"] if len(kept) == 1 else f"{kept[0]['name']}..{kept[-1]['name']}"
        what = (f"kept {'the complete shard' if len(kept) == 1 else f'the {len(kept)} complete shards'} "
                f"{names} ({sum(r['samples'] for r in kept):,} images)")
    else:
        what = "no shard was complete"
    if unfinished:
        what += f", removed the unfinished {unfinished}"
    fix = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the cause"
    return (f"{describe_os_error(error, out)}: {what}; {fix}, then run the same command again: "
            f"it resumes after the complete shards")


class _ShardSequence:
    """Fills shards in plan order. Each shard's record (its ShardInfo, the plan position after
    it, and its `_Segment`) goes into the progress file before the shard is published, so that
    every complete shard on disk is known to a re-run."""

    def __init__(self, out: Path, split: str, header: dict, options: ConvertOptions, records: list[dict]):
        self.out, self.split, self.header, self.options = out, split, header, options
        self.records = list(records)
        self.writer: ShardWriter | None = None
        self.segment = _Segment()

    @property
    def plan_end(self) -> int:
        return self.records[-1]["plan_end"] if self.records else 0

    def add(self, position: int, file: SourceFile, members: dict[str, bytes], reencoded: str) -> None:
        if self.writer is not None and _over_bytes(self.writer, members, self.options.shard_bytes):
            self._commit(position)
        if self.writer is None:
            self.writer = ShardWriter(self.out, shard_name(self.split, len(self.records)))
        self.writer.add(file.key, members)
        self.segment.labels[file.label] += 1
        if reencoded:
            self.segment.reencoded[reencoded] += 1
        else:
            self.segment.kept += 1
        if self.options.shard_samples and self.writer.samples >= self.options.shard_samples:
            self._commit(position + 1)

    def close(self, plan_end: int) -> _Segment:
        """Commit the last shard; return the files after it (all rejected), if any."""
        if self.writer is not None:
            self._commit(plan_end)
        return self.segment

    def abort(self) -> str | None:
        """Drop the unfinished shard, returning its name, if any; never raises (an error is on its
        way). Its files are found by name too: an interrupt may come while the writer is created."""
        unfinished = None
        if self.writer is not None:
            unfinished = self.writer.tar_path.name
            self.writer.abort()
        with contextlib.suppress(OSError):  # what stays is removed by the next run
            remove_temporary(self.out, self.split)
            # `write_atomic`'s temporary files (progress record, manifest) of a write that failed.
            for path in self.out.glob(f".{self.split}.*.tmp"):
                path.unlink(missing_ok=True)
        return unfinished

    def save(self) -> None:
        write_atomic(progress_path(self.out, self.split),
                     json.dumps({"header": self.header, "shards": self.records}, indent=1, sort_keys=True))

    def _commit(self, plan_end: int) -> None:
        info = self.writer.finish()
        self.records.append({**asdict(info), "plan_end": plan_end, "segment": self.segment.to_json()})
        self.save()
        self.writer.publish()
        self.writer, self.segment = None, _Segment()


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}"


def shuffled_plan(files: list[SourceFile], seed: int) -> list[SourceFile]:
    """The files in writing order: sorted by key (independent of layout), then shuffled by seed."""
    plan = sorted(files, key=lambda f: f.key)
    random.Random(seed).shuffle(plan)
    return plan


def fingerprint(plan: list[SourceFile]) -> str:
    """Identifies the source state: a changed, added or removed file changes it."""
    digest = hashlib.sha256()
    for f in plan:
        try:
            stat = f.path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size = mtime = -1  # unreadable files are rejected later, with the reason
        line = f"{f.key}\0{f.relpath}\0{f.label}\0{size}\0{mtime}\n"
        # surrogateescape: file names that are not valid UTF-8 still identify their file.
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _sample_members(file: SourceFile, prepared: Prepared, class_field: str) -> dict[str, bytes]:
    meta = {"path": file.relpath}
    if file.class_id is not None:
        meta[class_field] = file.class_id
    if prepared.reencoded:
        meta["reencoded"] = prepared.reencoded
    return {"jpg": prepared.jpeg, "cls": str(file.label).encode(),
            "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()}


def _over_bytes(writer: ShardWriter, members: dict[str, bytes], limit: int | None) -> bool:
    if limit is None or writer.samples == 0:
        return False
    # Each member takes a 512-byte header plus its data padded to 512-byte blocks.
    size = sum(512 + -(-len(data) // 512) * 512 for data in members.values())
    return writer.bytes + size > limit


def _finish(out: Path, source: SplitSource, header: dict, records: list[dict],
            trailing: _Segment) -> Manifest:
    segments = [_Segment.from_json(r["segment"]) for r in records] + [trailing]
    rejected = source.rejected + [r for segment in segments for r in segment.rejected]
    write_atomic(rejected_path(out, source.split),
                 "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in rejected))
    written = sum(r["samples"] for r in records)
    reencoded = sum((segment.reencoded for segment in segments), Counter())
    labels = sum((segment.labels for segment in segments), Counter())
    totals = {"found": source.found, "written": written, "rejected": len(rejected),
              "bytes": sum(r["bytes"] for r in records),
              "kept": sum(segment.kept for segment in segments),
              "reencoded": dict(sorted(reencoded.items())),
              "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejected).items())),
              "hidden_ignored": source.hidden_ignored}
    if source.classes:
        totals["per_class"] = [labels[c.index] for c in source.classes]
    if source.found != written + len(rejected):
        raise RuntimeError(f"bookkeeping error: found {source.found} != written {written} + "
                           f"rejected {len(rejected)}")  # a bug, never the user's input
    manifest = Manifest(
        split=source.split, **header,
        class_field=source.class_field,
        classes=[{"index": c.index, source.class_field: c.id, "name": c.name} for c in source.classes],
        shards=[{k: r[k] for k in ("name", "index", "samples", "bytes", "sha256")} for r in records],
        totals=totals,
        created_by=f"sslpipe {__version__}")
    write_atomic(manifest_path(out, source.split), manifest.to_json())
    progress_path(out, source.split).unlink(missing_ok=True)
    return manifest
