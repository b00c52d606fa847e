import json
import subprocess
import sys
import tarfile

import pytest
from PIL import Image


def sslpipe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sslpipe", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_convert_prints_a_reconciled_summary(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("kaggle")
    done = sslpipe("convert", "imagenet", root, tmp_path, "--workers", "2", "--shard-samples", "10",
                   "--verify", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "train: found 47 = written 44 + rejected 3" in done.stdout
    assert "val: found 23 = written 22 + rejected 1" in done.stdout
    assert "rejected  empty 1, not_image 1, truncated 1" in done.stdout
    assert "val: 3 shards, 22 samples" in done.stdout and done.stdout.rstrip().endswith("OK")
    again = sslpipe("convert", "imagenet", root, tmp_path, "--shard-samples", "10", "--quiet")
    assert again.returncode == 0 and "already complete" in again.stdout


@pytest.mark.parametrize("args, message", [
    (["convert", "imagenet", "{tmp}/nowhere", "{tmp}/out"], "ImageNet root {tmp}/nowhere does not exist"),
    (["convert", "folder", "{tmp}/nowhere", "{tmp}/out"], "source folder {tmp}/nowhere does not exist"),
    (["convert", "folder", "{tmp}", "{tmp}/../out", "--workers", "0"],
     "argument --workers: 0 is not a number of at least 1"),
    (["convert", "folder", "{tmp}", "{tmp}/../out", "--shard-mb", "inf"],
     "argument --shard-mb: inf is not a number of at least 0"),
    (["convert", "folder", "{tmp}", "{tmp}/../out", "--shard-samples", "many"],
     "argument --shard-samples: 'many' is not a number"),
    (["convert", "folder", "{tmp}", "{tmp}/out"],
     "the output folder {tmp}/out must not be inside {tmp}, which is scanned for source files"),
    (["convert", "folder", "{tmp}", "{tmp}/../out", "--quality", "101"], "quality must be within 1..100"),
    (["convert", "folder", "{tmp}", "{tmp}/../out", "--split", "my-split"], "split name 'my-split' must be"),
    (["verify", "{tmp}"], "no *.manifest.json in {tmp}"),
])
def test_errors_are_one_clear_line_without_a_traceback(tmp_path, args, message):
    (tmp_path / "a.jpg").write_bytes(b"not really")
    done = sslpipe(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2
    assert f"error: {message.format(tmp=tmp_path)}" in done.stderr
    assert "Traceback" not in done.stderr


def test_all_files_rejected_is_an_error_after_listing_them(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"")
    done = sslpipe("convert", "folder", tmp_path / "src", tmp_path / "out", "--quiet")
    assert done.returncode == 2 and "every file was rejected" in done.stderr
    assert '"reason": "empty"' in (tmp_path / "out" / "train.rejected.jsonl").read_text()


def test_downscaling_options_reach_the_converter(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    done = sslpipe("convert", "folder", root / "val", tmp_path, "--split", "val", "--short-side", "200",
                   "--max-side", "250", "--quality", "80", "--workers", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "re-encoded 22 (mode:CMYK 1, resized 21)" in done.stdout
    manifest = json.loads((tmp_path / "val.manifest.json").read_text())
    assert manifest["options"]["image"] == {"baseline": False, "max_side": 250, "quality": 80,
                                            "short_side": 200}
    with tarfile.open(tmp_path / "val-000000.tar") as tar:
        image = Image.open(tar.extractfile(next(m for m in tar if m.name.endswith(".jpg"))))
        assert min(image.size) <= 200 and max(image.size) <= 250
