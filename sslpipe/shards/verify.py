"""`sslpipe verify OUT`: re-read every shard and check it against its manifest.

A corrupt image kills a DALI pipeline mid-training with no way to skip it, so this reads
everything back the way training will: tar integrity, sha256, sizes and counts against the
manifest, the DALI index against the tar, one `.jpg`/`.cls`/`.json` per key, labels in range,
unique keys, and every `.jpg` decoded to 3 channels by DALI's CPU decoder.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sslpipe.errors import SslpipeError
from sslpipe.shards.decode_check import DaliDecodeCheck
from sslpipe.shards.manifest import Manifest, find_manifests, progress_path
from sslpipe.shards.resume import split_files
from sslpipe.shards.writer import INDEX_VERSION

REQUIRED = ("jpg", "cls", "json")


@dataclass(frozen=True)
class Problem:
    shard: str
    key: str | None
    message: str

    def __str__(self):
        where = f"{self.shard}: key {self.key}" if self.key else self.shard
        return f"{where}: {self.message}"


@dataclass
class SplitReport:
    split: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    decoded: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_output(out: Path, splits: list[str] | None = None, *, decode: bool = True,
                  threads: int = 2, progress: bool = True) -> list[SplitReport]:
    """Check every split (or the named ones) under `out`; problems are collected, not raised."""
    out = Path(out)
    if not out.is_dir():
        raise SslpipeError(f"shard folder {out} does not exist")
    manifests = {path.name.removesuffix(".manifest.json"): path for path in find_manifests(out)}
    unfinished = {path.name[1:].removesuffix(".progress.json") for path in out.glob(".*.progress.json")}
    known = sorted(set(manifests) | unfinished)
    if not known:
        raise SslpipeError(f"no *.manifest.json in {out}: not a converted shard folder")
    for split in splits or []:
        if split not in known:
            raise SslpipeError(f"no {split}.manifest.json in {out} (found: {', '.join(known)})")
    decoder = DaliDecodeCheck(threads) if decode else None
    reports = []
    for split in splits or known:
        if split in manifests:
            reports.append(_verify_split(out, Manifest.read(manifests[split]), decoder, progress))
        else:
            unfinished_problem = Problem(progress_path(out, split).name, None, "the conversion of this split "
                                         "is unfinished: re-run the same `sslpipe convert` command")
            reports.append(SplitReport(split, problems=[unfinished_problem]))
    return reports


def _verify_split(out: Path, manifest: Manifest, decoder, progress: bool) -> SplitReport:
    report = SplitReport(manifest.split, shards=len(manifest.shards))
    listed = {s["name"] for s in manifest.shards} | {s["index"] for s in manifest.shards}
    for path, _, _ in sorted(split_files(out, manifest.split)):
        if path.name not in listed:
            report.problems.append(
                Problem(path.name, None, "not listed in the manifest (left from another run?)"))

    seen_keys: dict[str, str] = {}
    total = sum(s["samples"] for s in manifest.shards)
    with tqdm(total=total, unit="img", desc=f"verifying {manifest.split}", disable=not progress) as bar:
        for shard in manifest.shards:
            problems = _verify_shard(out, shard, manifest, seen_keys, decoder, report, bar)
            report.problems += problems
    if report.samples != manifest.totals.get("written"):
        report.problems.append(Problem(f"{manifest.split}.manifest.json", None,
                                       f"totals.written is {manifest.totals.get('written')}, "
                                       f"the shards hold {report.samples}"))
    return report


def _verify_shard(out: Path, shard: dict, manifest: Manifest, seen_keys: dict, decoder,
                  report: SplitReport, bar) -> list[Problem]:
    name, path = shard["name"], out / shard["name"]
    if not path.is_file():
        return [Problem(name, None, "missing")]
    problems = []
    size = path.stat().st_size
    if size != shard["bytes"]:
        problems.append(Problem(name, None, f"size {size} bytes, manifest says {shard['bytes']}"))
    if _sha256(path) != shard["sha256"]:
        problems.append(Problem(name, None, "sha256 differs from the manifest (the file was changed)"))

    try:
        samples, index_lines = _read_tar(path)
    except (tarfile.TarError, OSError, EOFError) as e:
        return problems + [Problem(name, None, f"not a readable tar: {e}")]
    report.samples += len(samples)
    report.bytes += size
    if len(samples) != shard["samples"]:
        problems.append(Problem(name, None, f"{len(samples)} samples, manifest says {shard['samples']}"))
    problems += _check_index(out / shard["index"], index_lines)

    images = []
    for key, members in samples.items():
        problems += [Problem(name, key, p) for p in _check_sample(key, members, manifest)]
        if key in seen_keys:
            problems.append(Problem(name, key, f"duplicate key (also in {seen_keys[key]})"))
        seen_keys.setdefault(key, name)
        if "jpg" in members:
            images.append((key, members["jpg"]))
    if decoder is not None:
        for key, error in decoder.check(images):
            problems.append(Problem(name, key, f".jpg does not decode to 3-channel RGB with DALI: {error}"))
        report.decoded += len(images)
    bar.update(len(samples))
    return problems


def _read_tar(path: Path) -> tuple[dict[str, dict[str, bytes]], list[str]]:
    """{key: {ext: data}} in tar order, and the index lines that this tar should have."""
    samples: dict[str, dict[str, bytes]] = {}
    lines: dict[str, list[str]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            if len(data) != member.size:
                raise EOFError(f"{member.name}: truncated data")
            samples.setdefault(key, {})[ext] = data
            lines.setdefault(key, []).append(f"{ext} {member.offset_data} {member.size} {member.name}")
    return samples, [" ".join(entries) for entries in lines.values()]


def _check_index(path: Path, expected: list[str]) -> list[Problem]:
    try:
        text = path.read_text()
    except OSError as e:
        return [Problem(path.name, None, f"missing or unreadable DALI index: {e.strerror or e}")]
    if text != f"{INDEX_VERSION} {len(expected)}\n" + "".join(line + "\n" for line in expected):
        return [Problem(path.name, None, "does not match its tar (rebuild it with DALI's wds2idx, "
                                         "or convert again)")]
    return []


def _check_sample(key: str, members: dict[str, bytes], manifest: Manifest) -> list[str]:
    problems = [f"missing .{ext}" for ext in REQUIRED if ext not in members]
    if not key or "/" in key:
        problems.append("invalid key")
    label = meta = None
    if "cls" in members:
        try:
            label = int(members["cls"])
        except ValueError:
            problems.append(f".cls is not an integer: {members['cls'][:20]!r}")
        else:
            valid = range(len(manifest.classes)) if manifest.labelled else range(-1, 0)
            if label not in valid:
                problems.append(f"label {label} outside {valid.start}..{valid.stop - 1}")
                label = None
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError as e:
            problems.append(f".json does not parse: {e}")
    if label is not None and manifest.labelled and isinstance(meta, dict):
        expected = manifest.classes[label][manifest.class_field]
        if meta.get(manifest.class_field) != expected:
            problems.append(f".json says {manifest.class_field} {meta.get(manifest.class_field)!r}, "
                            f"label {label} is {expected!r}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
