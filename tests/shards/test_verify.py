import shutil
import subprocess
import sys
import tarfile

import pytest

from sslpipe.errors import SslpipeError
from sslpipe.shards.convert import ConvertOptions, convert_split
from sslpipe.shards.imagenet import imagenet_splits
from sslpipe.shards.verify import verify_output
from sslpipe.shards.writer import ShardWriter, read_index


@pytest.fixture(scope="module")
def converted(imagenet_tree, tmp_path_factory):
    root, _ = imagenet_tree("classic")
    out = tmp_path_factory.mktemp("verified") / "shards"
    for source in imagenet_splits(root, ["train", "val"]):
        convert_split(source, out, ConvertOptions(shard_samples=7), progress=False)
    return out


@pytest.fixture
def shards(converted, tmp_path):
    """A private copy of the converted shards, to damage."""
    return shutil.copytree(converted, tmp_path / "shards")


def problems(out, **kwargs):
    return [str(p) for r in verify_output(out, progress=False, **kwargs) for p in r.problems]


def first_sample(shards, shard="val-000001"):
    return read_index(shards / f"{shard}.idx")[0]


def test_a_clean_conversion_passes(shards):
    reports = verify_output(shards, progress=False)
    assert [(r.split, r.ok) for r in reports] == [("train", True), ("val", True)]
    assert [r.decoded for r in reports] == [44, 22] and [r.samples for r in reports] == [44, 22]


def test_a_tampered_image_is_named_by_shard_and_key(shards):
    (ext, offset, size, name), *_ = first_sample(shards)
    with open(shards / "val-000001.tar", "r+b") as f:
        f.seek(offset)
        f.write(bytes(size))  # the JPEG's bytes zeroed; the tar structure stays intact
    key = name.split(".")[0]
    found = problems(shards, splits=["val"])
    assert "val-000001.tar: sha256 differs from the manifest (the file was changed)" in found
    assert any(p.startswith(f"val-000001.tar: key {key}: .jpg does not decode") for p in found), found
    assert len(found) == 2


def test_a_truncated_or_missing_shard(shards):
    data = (shards / "train-000003.tar").read_bytes()
    (shards / "train-000003.tar").write_bytes(data[: len(data) // 2])
    (shards / "train-000005.tar").unlink()
    found = problems(shards, splits=["train"], decode=False)
    assert any(p.startswith("train-000003.tar: size") for p in found)
    assert any(p.startswith("train-000003.tar: not a readable tar") for p in found)
    assert "train-000005.tar: missing" in found
    assert any("totals.written is 44, the shards hold" in p for p in found)


def test_a_wrong_index_and_a_stray_shard(shards):
    index = shards / "val-000000.idx"
    index.write_text(index.read_text().replace(" 512 ", " 1024 ", 1))
    shutil.copy(shards / "val-000000.tar", shards / "val-000009.tar")
    found = problems(shards, splits=["val"], decode=False)
    assert sorted(found) == [
        "val-000000.idx: does not match its tar (rebuild it with DALI's wds2idx, or convert again)",
                     "val-000009.tar: not listed in the manifest (left from another run?)"]


def read_samples(shards, name):
    """[(key, {ext: bytes})] of a shard, in order."""
    samples = []
    with tarfile.open(shards / f"{name}.tar") as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tar.extractfile(member).read()
    return samples


def rewrite_shard(shards, name, samples):
    writer = ShardWriter(shards, name)
    for key, members in samples:
        writer.add(key, members)
    writer.finish()
    writer.publish()


def test_bad_labels_and_missing_members(shards):
    samples = read_samples(shards, "val-000002")
    (bad_label, members0), (no_json, members1), (wrong_class, members2) = samples[:3]
    members0["cls"] = b"99"
    del members1["json"]
    members2["cls"] = b"1" if members2["cls"] == b"0" else b"0"
    rewrite_shard(shards, "val-000002", samples)
    found = problems(shards, splits=["val"], decode=False)
    assert f"val-000002.tar: key {bad_label}: label 99 outside 0..4" in found
    assert f"val-000002.tar: key {no_json}: missing .json" in found
    assert any(p.startswith(f"val-000002.tar: key {wrong_class}: .json says wnid") for p in found)


def test_duplicate_keys_across_shards(shards):
    repeated = read_samples(shards, "val-000000")[0]
    rewrite_shard(shards, "val-000003", read_samples(shards, "val-000003") + [repeated])
    found = problems(shards, splits=["val"], decode=False)
    assert f"val-000003.tar: key {repeated[0]}: duplicate key (also in val-000000.tar)" in found


def test_an_unfinished_split_is_a_problem(shards):
    (shards / "val.manifest.json").rename(shards / ".val.progress.json")  # as if killed before the end
    reports = verify_output(shards, progress=False, decode=False)
    assert [(r.split, r.ok) for r in reports] == [("train", True), ("val", False)]
    assert "unfinished: re-run the same `sslpipe convert` command" in str(reports[1].problems[0])


def test_not_a_shard_folder(tmp_path):
    with pytest.raises(SslpipeError, match="does not exist"):
        verify_output(tmp_path / "nowhere")
    with pytest.raises(SslpipeError, match="no \\*.manifest.json"):
        verify_output(tmp_path)


def test_the_command_exits_non_zero_on_problems(shards):
    command = [sys.executable, "-m", "sslpipe", "verify", str(shards), "--quiet"]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0 and "val: 4 shards, 22 samples" in ok.stdout and "OK" in ok.stdout
    (shards / "val-000001.idx").unlink()
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 1 and "val-000001.idx: missing or unreadable DALI index" in bad.stdout
