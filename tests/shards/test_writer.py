import errno
import io
import os
import tarfile

import pytest

from sslpipe.shards.writer import ShardWriter, read_index

SAMPLES = [("a_1", {"jpg": b"\xff\xd8" + b"x" * 1000, "cls": b"3", "json": b"{}"}),
           ("b_2", {"jpg": b"y" * 512, "cls": b"-1", "json": b'{"path":"p"}'}),
           ("c-3", {"jpg": b"", "cls": b"0", "json": b"{}"})]


def write(directory, name="train-000000"):
    writer = ShardWriter(directory, name)
    for key, members in SAMPLES:
        writer.add(key, members)
    info = writer.finish()
    writer.publish()
    return info


def test_index_matches_dalis_own_indexer(tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # ships with nvidia-dali
    info = write(tmp_path)
    reference = tmp_path / "dali.idx"
    with wds2idx.IndexCreator(str(tmp_path / info.name), str(reference), verbose=False) as creator:
        creator.create_index()
    assert (tmp_path / info.index).read_text() == reference.read_text()


def test_tar_holds_the_samples_and_the_index_points_at_their_bytes(tmp_path):
    info = write(tmp_path)
    data = (tmp_path / info.name).read_bytes()
    assert info.samples == 3 and info.bytes == len(data)
    for (key, members), entries in zip(SAMPLES, read_index(tmp_path / info.index)):
        assert [e[0] for e in entries] == list(members)
        for ext, offset, size, name in entries:
            assert name == f"{key}.{ext}"
            assert data[offset:offset + size] == members[ext]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [f"{k}.{e}" for k, m in SAMPLES for e in m]


def test_same_samples_give_the_same_bytes(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = write(tmp_path / "a"), write(tmp_path / "b")
    assert first.sha256 == second.sha256
    assert (tmp_path / "a" / first.name).read_bytes() == (tmp_path / "b" / second.name).read_bytes()


def test_nothing_appears_under_the_final_name_before_publish(tmp_path):
    writer = ShardWriter(tmp_path, "train-000000")
    writer.add(*SAMPLES[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".train-000000.tar.tmp"]
    writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".train-000000.idx.tmp", ".train-000000.tar.tmp"]
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["a.b", "dir/a", "", "k" * 91])
def test_keys_that_readers_would_split_wrongly_are_refused(tmp_path, key):
    writer = ShardWriter(tmp_path, "x")
    with pytest.raises(ValueError, match="invalid sample key"):
        writer.add(key, {"jpg": b"1"})
    writer.abort()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_abort_after_a_full_disk_raises_nothing_and_removes_the_shard(tmp_path):
    # The temporary tar points at /dev/full: every flush fails with ENOSPC, as on a full disk.
    (tmp_path / ".train-000000.tar.tmp").symlink_to("/dev/full")
    writer = ShardWriter(tmp_path, "train-000000")
    with pytest.raises(OSError) as error:
        for _ in range(100):  # past the write buffer
            writer.add("a", {"jpg": b"x" * 4096})
    assert error.value.errno == errno.ENOSPC
    writer.abort()  # its close flushes the buffered rest, which fails again: not raised
    assert list(tmp_path.iterdir()) == []
