"""The state of an output folder: a finished split, an interrupted one, or leftovers to clear.

Files of a split `S`: `S-NNNNNN.tar` + `.idx` (published shards), `.S-NNNNNN.{tar,idx}.tmp`
(a shard being written), `.S.progress.json` (records of the shards written so far, kept until
the split is finished), `S.rejected.jsonl` and `S.manifest.json` (written last).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.shards.manifest import Manifest, manifest_path, progress_path, rejected_path


def writable_folder(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise SslpipeError(f"output folder {out} is not writable: {e.strerror or e}") from e
    return out


def existing_conversion(out: Path, split: str, header: dict) -> Manifest | list[dict]:
    """The finished manifest, or the shard records of an interrupted run ([] for a fresh start)."""
    done, partial_run = manifest_path(out, split), progress_path(out, split)
    if done.exists():
        manifest = Manifest.read(done)
        check_same(done, {"source": manifest.source, "options": manifest.options,
                           "fingerprint": manifest.fingerprint}, header)
        for shard in manifest.shards:
            path = out / shard["name"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                raise SslpipeError(f"{path} is missing or has the wrong size; run `sslpipe verify {out}` "
                                   "or convert again with --overwrite")
        partial_run.unlink(missing_ok=True)  # killed after writing the manifest, before this
        return manifest
    if partial_run.exists():
        try:
            saved = json.loads(partial_run.read_text())
            saved_header, records = saved["header"], saved["shards"]
            check_same(partial_run, saved_header, header)
            # Trust only shards on disk as recorded (the last one may have been killed before
            # it was published).
            for number, record in enumerate(records):
                path = out / record["name"]
                if not path.is_file() or path.stat().st_size != record["bytes"]:
                    return records[:number]
            return records
        except (ValueError, KeyError, TypeError) as e:
            raise SslpipeError(f"{partial_run} is damaged ({type(e).__name__}: {e}); delete it to "
                               "convert this split from the start, or pass --overwrite") from e
    if any(split_files(out, split)):
        raise SslpipeError(f"{out} holds {split}-*.tar shards without a manifest or progress record; "
                           "choose another output folder or pass --overwrite")
    return []


def check_same(path: Path, saved: dict, now: dict) -> None:
    if saved == now:
        return
    differences = []
    for part in ("options", "source"):
        for key in sorted(set(saved[part]) | set(now[part])):
            if saved[part].get(key) != now[part].get(key):
                differences.append(f"{key}: {saved[part].get(key)!r} there, {now[part].get(key)!r} now")
    if saved["fingerprint"] != now["fingerprint"]:
        differences.append("the source files changed (names, sizes, modification times or labels)")
    raise SslpipeError(f"{path} was written with different settings ({'; '.join(differences)}); "
                       "use another output folder, the same settings, or --overwrite")


def split_files(out: Path, split: str):
    """(path, shard number, temporary?) of every shard file of a split, finished or not."""
    pattern = re.compile(rf"(\.?){split}-(\d{{6}})\.(tar|idx)(\.tmp)?")
    for path in out.iterdir():
        match = pattern.fullmatch(path.name)
        if match and bool(match[1]) == bool(match[4]):
            yield path, int(match[2]), bool(match[4])


def remove_uncommitted(out: Path, split: str, committed: int) -> None:
    """Remove temporary files and shards after the last committed one (a killed run's leftovers)."""
    for path, number, temporary in list(split_files(out, split)):
        if temporary or number >= committed:
            path.unlink()


def remove_temporary(out: Path, split: str) -> None:
    for path, _, temporary in list(split_files(out, split)):
        if temporary:
            path.unlink(missing_ok=True)


def remove_split(out: Path, split: str) -> None:
    for path, _, _ in list(split_files(out, split)):
        path.unlink()
    for path in (manifest_path(out, split), rejected_path(out, split), progress_path(out, split)):
        path.unlink(missing_ok=True)
