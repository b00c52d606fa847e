"""`sslpipe convert` onto a disk that really fills up (a small tmpfs): one error line, the complete
shards kept, the unfinished one removed, and the same command finishing once there is room."""

import os
from pathlib import Path

import pytest

from sslpipe.cli import main

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def small_disk(tmpfs):
    """`resize(bytes)` -> the mount point of a tmpfs of that size (mounted, then remounted)."""
    return lambda size: tmpfs("disk", f"size={size}")


def convert(root, out):
    return main(["convert", "imagenet", str(root), str(out), "--split", "train", "--shard-samples", "8",
                 "--workers", "1", "--quiet"])


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def pages(path):
    return -(-path.stat().st_size // PAGE) * PAGE  # what a file takes on a tmpfs


def test_a_disk_that_fills_up_is_one_error_line_and_the_same_command_resumes(
        imagenet_tree, tmp_path, small_disk, capsys):
    root, _ = imagenet_tree("classic")
    assert convert(root, tmp_path / "reference") == 0
    reference = folder_bytes(tmp_path / "reference")
    shards = sorted((tmp_path / "reference").glob("train-*.tar"))
    assert len(shards) >= 4
    # Room for two shards with their indexes, the progress record and 16 KiB of the third shard:
    # the disk then fills at the end of one of tarfile's 16-KiB writes, and the bytes after it
    # wait in the file's buffer, whose flush on closing fails once more (a second traceback once).
    room = sum(pages(p) + pages(p.with_suffix(".idx")) for p in shards[:2]) + PAGE + 16 * 1024
    assert room < sum(pages(p) for p in shards[:3])
    out = small_disk(room) / "out"
    capsys.readouterr()

    assert convert(root, out) == 2
    stderr = capsys.readouterr().err
    assert stderr.splitlines() == [
        f"sslpipe: error: no space left on {out}: kept the 2 complete shards "
        f"train-000000.tar..train-000001.tar (16 images), removed the unfinished train-000002.tar; "
        f"free some space, then run the same command again: it resumes after the complete shards"]
    assert "Traceback" not in stderr
    kept = folder_bytes(out)
    assert sorted(kept) == [".train.progress.json", "train-000000.idx", "train-000000.tar",
                            "train-000001.idx", "train-000001.tar"]  # no partial or temporary file
    assert all(kept[name] == reference[name] for name in kept if name.startswith("train-"))

    small_disk(4 * sum(pages(p) for p in shards))
    assert convert(root, out) == 0
    assert "resumed after 2 complete shards" in capsys.readouterr().out
    assert folder_bytes(out) == reference
