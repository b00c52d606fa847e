"""A conversion stopped at any moment, in any way, leaves only complete shards, and the same
command finishes it with the bytes of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from sslpipe.errors import SslpipeError
from sslpipe.shards import convert as convert_module
from sslpipe.shards.convert import ConvertOptions, convert_split
from sslpipe.shards.imagenet import imagenet_splits
from sslpipe.shards.writer import ShardWriter

SIZES = {"train_per_class": 30, "val_per_class": 2}  # 157 train files: a run that lasts a while


@pytest.fixture
def root(imagenet_tree):
    return imagenet_tree("classic", **SIZES)[0]


def converter(root, out, workers=1, **popen):
    """`sslpipe convert` of the train split in a child process, shards of 2 samples."""
    command = [sys.executable, "-m", "sslpipe", "convert", "imagenet", str(root), str(out), "--split",
               "train", "--shard-samples", "2", "--workers", str(workers), "--quiet"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_shards(process, out, count):
    while len(list(out.glob("train-*.tar"))) < count:
        assert process.poll() is None, "the converter ended before it could be interrupted"
        time.sleep(0.001)


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def assert_only_complete_shards(out):
    for tar_path in out.glob("*.tar"):
        index = tar_path.with_suffix(".idx")
        assert index.exists(), f"{tar_path.name} has no index"
        with tarfile.open(tar_path) as tar:
            assert len(tar.getmembers()) == 3 * int(index.read_text().split()[1])


@pytest.fixture
def reference(root, tmp_path):
    out = tmp_path / "reference"
    assert converter(root, out).wait() == 0
    return folder_bytes(out)


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_at_any_moment_then_rerun_equals_an_uninterrupted_run(root, tmp_path, reference, workers):
    out = tmp_path / "interrupted"
    out.mkdir()
    for more in (1, 5, 20):
        process = converter(root, out, workers)
        wait_for_shards(process, out, len(list(out.glob("*.tar"))) + more)
        children = psutil.Process(process.pid).children()
        process.kill()
        process.wait()
        assert not (out / "train.manifest.json").exists(), "the converter finished before it was killed"
        assert_only_complete_shards(out)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, "worker processes outlived the killed converter"
    process = converter(root, out, workers)
    assert process.wait() == 0, process.stderr.read()
    assert folder_bytes(out) == reference
    assert not list(out.glob(".*"))  # no temporary files or progress records left


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(root, tmp_path, reference):
    out = tmp_path / "interrupted"
    # Its own process group, so that the signal reaches the workers too, as Ctrl-C in a terminal.
    # SIGINT set back to its default: a test run started in the background (`cmd &` in a script)
    # inherits it ignored, and Python then never raises KeyboardInterrupt.
    process = converter(root, out, workers=2, start_new_session=True,
                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_shards(process, out, 3)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130
    stderr = process.stderr.read()
    assert "interrupted; the complete shards are kept and the same command resumes" in stderr
    assert "Traceback" not in stderr
    assert not list(out.glob(".*.tmp"))  # the unfinished shard was removed
    assert converter(root, out, workers=2).wait() == 0
    assert folder_bytes(out) == reference


def test_a_worker_that_dies_stops_the_run_with_a_clear_error(root, tmp_path, reference):
    out = tmp_path / "interrupted"
    process = converter(root, out, workers=2)
    wait_for_shards(process, out, 1)
    workers = [p for p in psutil.Process(process.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    workers[0].kill()  # as the out-of-memory killer would
    assert process.wait(timeout=60) == 2
    assert "a worker process died" in process.stderr.read()
    assert_only_complete_shards(out)
    assert converter(root, out, workers=2).wait() == 0
    assert folder_bytes(out) == reference


@pytest.mark.parametrize("options", [ConvertOptions(shard_samples=7),
                                     ConvertOptions(shard_samples=None, shard_bytes=300_000)],
                         ids=["by-count", "by-bytes"])
def test_a_crash_between_recording_and_publishing_a_shard(root, tmp_path, monkeypatch, options):
    (train,) = imagenet_splits(root, ["train"])
    convert_split(train, tmp_path / "reference", options, progress=False)
    publish, published = ShardWriter.publish, []

    def crash_at_the_third(writer):
        if len(published) == 2:
            raise KeyboardInterrupt
        published.append(writer.name)
        publish(writer)

    monkeypatch.setattr(ShardWriter, "publish", crash_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        convert_split(train, tmp_path / "out", options, progress=False)
    monkeypatch.undo()
    published = sorted(p.name for p in (tmp_path / "out").glob("*.tar"))
    assert published == ["train-000000.tar", "train-000001.tar"]
    result = convert_split(train, tmp_path / "out", options, progress=False)
    assert result.resumed_from == 2 and result.processed < train.found
    assert folder_bytes(tmp_path / "out") == folder_bytes(tmp_path / "reference")


def test_a_full_disk_is_a_clear_error_and_resumable(root, tmp_path, monkeypatch):
    (train,) = imagenet_splits(root, ["train"])
    finish, finished = ShardWriter.finish, []

    def disk_full_at_the_third(writer):
        if len(finished) == 2:
            raise OSError(28, "No space left on device")
        finished.append(writer.name)
        return finish(writer)

    monkeypatch.setattr(ShardWriter, "finish", disk_full_at_the_third)
    with pytest.raises(SslpipeError, match=r"^no space left on .*: kept the 2 complete shards "
                       r"train-000000.tar..train-000001.tar \(14 images\), removed the unfinished "
                       r"train-000002.tar; free some space, then run the same command again"):
        convert_split(train, tmp_path, ConvertOptions(shard_samples=7), progress=False)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))
    assert convert_split(train, tmp_path, ConvertOptions(shard_samples=7), progress=False).resumed_from == 2


def test_a_full_disk_while_writing_the_manifest_keeps_every_shard(root, tmp_path, monkeypatch):
    (train,) = imagenet_splits(root, ["train"])
    options = ConvertOptions(shard_samples=50)
    write_atomic = convert_module.write_atomic

    def disk_full_at_the_manifest(path, text):
        if path.name.endswith(".manifest.json"):
            raise OSError(28, "No space left on device")
        write_atomic(path, text)

    monkeypatch.setattr(convert_module, "write_atomic", disk_full_at_the_manifest)
    with pytest.raises(SslpipeError, match=r"^no space left on .*: kept the 4 complete shards "
                       r"train-000000.tar..train-000003.tar \(154 images\); free some space"):
        convert_split(train, tmp_path, options, progress=False)
    monkeypatch.undo()
    result = convert_split(train, tmp_path, options, progress=False)
    assert result.resumed_from == 4 and (tmp_path / "train.manifest.json").exists()
