"""The loader's host work per batch: indexes and labels parsed for the whole batch at once, and the
next epoch's pipeline built ahead, each against what it replaced (a loop per sample, a pipeline
built at the start of each epoch)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_data import resized

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.shardlist import SampleIndex, cls_values, resolve_shards


def padded(strings: list[bytes], extra: int = 3) -> np.ndarray:
    """(B, W) uint8: `strings` zero-padded on the right to the longest + `extra`, as DALI's fn.pad."""
    rows = np.zeros((len(strings), max(map(len, strings), default=0) + extra), np.uint8)
    for row, text in zip(rows, strings):
        row[:len(text)] = np.frombuffer(text, np.uint8)
    return rows


def odd_shards(pattern: str, target: Path) -> list[str]:
    """The shards of `pattern` copied to a folder whose name holds ':', under names of different
    lengths that hold ':' too."""
    target.mkdir(parents=True)
    paths = []
    for i, tar in enumerate(sorted(Path(pattern).parent.glob("train-*.tar"))):
        name = f"{'s' * (1 + 9 * i)}:{i}"
        shutil.copy(tar, target / f"{name}.tar")
        shutil.copy(tar.with_suffix(".idx"), target / f"{name}.idx")
        paths.append(str(target / f"{name}.tar"))
    return paths


def message(call) -> str:
    with pytest.raises(SslpipeError) as error:
        call()
    return str(error.value)


# Global sample indexes.

def test_of_sources_equals_of_source_on_dali_batches(tmp_path, coordinate_shards):
    shards = odd_shards(coordinate_shards, tmp_path / "we:ird")
    loader = ViewLoader(resized("simclr", 8), shards, batch_size=16, seed=5)
    pipe, names = loader._build(0, None)
    seen = []
    for _ in range(3):
        rows = np.asarray(dict(zip(names, pipe.run()))["sources"].as_tensor())
        lengths = {len(row.tobytes().rstrip(b"\0").split(b".tar:")[0]) for row in rows}
        assert rows.dtype == np.uint8 and len(lengths) > 1  # shards of several path lengths in one batch
        expected = [loader.samples.of_source(row.tobytes().rstrip(b"\0").decode()) for row in rows]
        assert loader.samples.of_sources(rows).tolist() == expected
        seen += expected
    assert len(set(seen)) == len(seen)


def test_of_sources_on_every_sample_as_strings(tmp_path, coordinate_shards):
    shards = resolve_shards(odd_shards(coordinate_shards, tmp_path / "a:b"))
    samples = SampleIndex(shards)
    sources = [f"{shard.path}:{offset}:{key}.jpg".encode()
               for shard in shards for key, offset in zip(shard.keys, shard.offsets)]
    order = np.random.default_rng(0).permutation(len(sources))
    rows = padded([sources[i] for i in order])
    assert samples.of_sources(rows).tolist() == order.tolist()
    assert [samples.of_source(s.decode()) for s in sources] == list(range(len(samples)))
    assert samples.of_sources(rows[:0]).tolist() == []


def test_a_source_that_is_no_sample_raises_what_of_source_raises(tmp_path, coordinate_shards):
    shards = resolve_shards(odd_shards(coordinate_shards, tmp_path / "c:d"))
    samples = SampleIndex(shards)
    first, last = shards[0], shards[-1]
    good = f"{first.path}:{first.offsets[1]}:{first.keys[1]}.jpg"
    bad = [f"{first.path}:{first.offsets[1] + 512}:{first.keys[1]}.jpg",   # rewritten: another offset
           f"{last.path}:{10 ** 12}:{last.keys[0]}.jpg",                     # past every shard's end
           f"{first.path}:{'9' * 25}:{first.keys[0]}.jpg",                   # more digits than int64
           f"{tmp_path / 'other.tar'}:{first.offsets[0]}:{first.keys[0]}.jpg",  # not in the list
           f"{first.path}x:{first.offsets[0]}:{first.keys[0]}.jpg",
           f"{first.path}:-{first.offsets[0]}:{first.keys[0]}.jpg",
           f"{first.path}:{first.offsets[0]}",                               # one ':' only
           "no-colon"]
    for source in bad:
        expected = message(lambda: samples.of_source(source))
        assert "which is no sample of the shard list (was the shard rewritten" in expected
        assert message(lambda: samples.of_sources(padded([good.encode(), source.encode()]))) == expected


# Labels.

LABELS = [b"7", b" 12\n", b"-3", b"+4", b"", b"   ", b"x", b"1 2", b"007", b"0", b"-0", b"\t-8\r\n",
          b"\x0b5\x0c", b"1" * 18, b"9" * 18, b"-" + b"9" * 18, b"1" * 19, b"0" * 19 + b"5",
          b"-" + b"9" * 18 + b"8", b"9" * 19, b"1" * 40, b"1_000", b"\xff7", b"7\xff", b"\xd9\xa3",
          b"\x1c7", b"\xa07", b"-", b"+", b"--3", b"+-3", b"- 3", b"1\x002", b"\x007", b"12.0", b"0x1f"]


def python_int(text: bytes) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if -2 ** 63 <= value < 2 ** 63 else None  # beyond int64: no label either


@pytest.mark.parametrize("extra", [0, 5])
def test_cls_values_are_int_of_each_cls_or_flagged(extra):
    values, ok = cls_values(padded(LABELS, extra))
    for text, value, integer in zip(LABELS, values.tolist(), ok.tolist()):
        expected = python_int(text)
        assert integer == (expected is not None), text
        if integer:
            assert value == expected, text
    # 19 digits and more, or '_' between digits: int() reads them, so they are read, not refused.
    long_ones = dict(zip(LABELS, zip(values.tolist(), ok.tolist())))
    assert long_ones[b"1" * 19] == (1111111111111111111, True)
    assert long_ones[b"0" * 19 + b"5"] == (5, True)
    assert long_ones[b"1_000"] == (1000, True)
    assert not long_ones[b"9" * 19][1] and not long_ones[b"1" * 40][1]  # beyond int64: flagged


def test_cls_values_of_a_batch_of_empty_labels():
    values, ok = cls_values(np.zeros((3, 0), np.uint8))
    assert values.shape == ok.shape == (3,) and not ok.any()
    values, ok = cls_values(padded([b"5", b"-1"], 0))
    assert values.tolist() == [5, -1] and ok.all()


# The next epoch's pipeline built ahead.

def stream(loader, epochs: int) -> list:
    """(epoch, index, labels, views) of every batch of `epochs` epochs, and whether a pipeline was
    being built ahead when each batch came."""
    taken = []
    for _ in range(epochs):
        epoch = loader.epoch
        for batch in loader:
            taken.append((epoch, batch.index.clone(), batch.labels.clone(), [v.clone() for v in batch.views],
                          loader._ahead is not None))
    return taken


def same(one, two) -> bool:
    return len(one) == len(two) and all(
        a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
        and all(torch.equal(x, y) for x, y in zip(a[3], b[3])) for a, b in zip(one, two))


def loaders(pattern, **settings) -> tuple[ViewLoader, ViewLoader]:
    """A loader that builds ahead (as on a GPU) and one that builds each epoch at its start (as on
    the CPU), otherwise the same."""
    ahead, fresh = (ViewLoader(resized("simclr", 16), pattern, batch_size=8, seed=3, **settings)
                    for _ in range(2))
    assert not fresh._builds_ahead  # the CPU's default
    ahead._builds_ahead = True
    return ahead, fresh


@pytest.mark.parametrize("shuffle_buffer", [4096, 32])
def test_batches_of_a_pipeline_built_ahead_equal_those_of_a_fresh_one(coordinate_shards, shuffle_buffer):
    ahead, fresh = loaders(coordinate_shards, shuffle_buffer=shuffle_buffer)
    built_ahead, built_fresh = stream(ahead, 3), stream(fresh, 3)
    assert same(built_ahead, built_fresh) and {b[0] for b in built_ahead} == {0, 1, 2}
    assert not any(b[4] for b in built_fresh)
    building = [b[4] for b in built_ahead if b[0] == 0]
    runs_ahead = -(-shuffle_buffer // 8) + ahead.prefetch  # batches left when the build starts
    assert building == [0 < i >= len(ahead) - runs_ahead for i in range(len(ahead))]


def test_set_epoch_to_another_epoch_drops_the_pipeline_built_ahead(coordinate_shards):
    ahead, fresh = loaders(coordinate_shards, shuffle_buffer=32)
    reference = stream(fresh, 4)
    for _, _ in zip(range(len(ahead) - 2), ahead):  # epoch 0 near its end: epoch 1 is built ahead
        pass
    assert ahead._ahead is not None and ahead._ahead.epoch == 1
    ahead.set_epoch(3)
    assert ahead._ahead is None
    assert same(stream(ahead, 1), [b for b in reference if b[0] == 3])
    # set_epoch to the epoch built ahead keeps it, and its batches are those of that epoch.
    ahead.set_epoch(4)
    for _, _ in zip(range(len(ahead) - 1), ahead):
        pass
    built = ahead._ahead
    ahead.set_epoch(5)
    assert ahead._ahead is built
    fresh.set_epoch(5)
    assert same(stream(ahead, 1), stream(fresh, 1))


@pytest.mark.parametrize("stop_at", [9, 14])  # before the build ahead began (at batch 10's request), after
def test_state_dict_near_the_end_of_an_epoch_resumes_exactly(coordinate_shards, stop_at):
    ahead, fresh = loaders(coordinate_shards, shuffle_buffer=32)
    reference = stream(fresh, 2)
    taken = [(0, b.index.clone(), b.labels.clone(), [v.clone() for v in b.views], False)
             for _, b in zip(range(stop_at), ahead)]
    assert (ahead._ahead is not None) == (stop_at >= 10)
    state = ahead.state_dict()
    resumed = ViewLoader(resized("simclr", 16), coordinate_shards, batch_size=8, seed=3, shuffle_buffer=32)
    resumed.load_state_dict(state)
    rest = stream(resumed, 2)
    assert same(taken + rest, reference)
    assert same(taken + stream(ahead, 2), reference)  # taking the state left the loader as it was
