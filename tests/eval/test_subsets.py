"""Class-balanced label subsets, and copying a subset of samples into new shards."""

import glob
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sslpipe.errors import SslpipeError
from sslpipe.eval.subsets import balanced_subset, write_subset_shards
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.shards.writer import read_index

COUNTS = {0: 100, 1: 50, 2: 7, 3: 1, 4: 200, 6: 25, 7: 5}


def _labels(seed=0):
    labels = [c for c, n in COUNTS.items() for _ in range(n)]
    return np.random.default_rng(seed).permutation(labels).tolist()


def test_every_class_gets_its_rounded_share_and_at_least_one():
    labels = _labels()
    subset = balanced_subset(labels, 0.1, seed=0)
    assert subset == sorted(set(subset)) and all(type(i) is int for i in subset)
    # 0.7 -> 1 and 0.1 -> 1 (at least one), 2.5 -> 3 and 0.5 -> 1 (half up).
    assert Counter(labels[i] for i in subset) == {0: 10, 1: 5, 2: 1, 3: 1, 4: 20, 6: 3, 7: 1}
    assert balanced_subset(labels, 1.0) == list(range(len(labels)))


def test_same_inputs_same_subset_and_smaller_fractions_nest():
    labels = _labels()
    first = balanced_subset(labels, 0.1, seed=7)
    assert balanced_subset(labels, 0.1, seed=7) == first
    assert balanced_subset(torch.tensor(labels), 0.1, seed=7) == first
    assert balanced_subset(np.array(labels, dtype=np.uint16), 0.1, seed=7) == first
    assert balanced_subset(labels, 0.1, seed=8) != first
    one, ten, half = (set(balanced_subset(labels, f, seed=7)) for f in (0.01, 0.1, 0.5))
    assert one < ten < half


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.01, float("nan"), True, "0.1"])
def test_fraction_must_lie_in_zero_one(fraction):
    with pytest.raises(SslpipeError, match="fraction"):
        balanced_subset([0, 1, 1], fraction)


def test_labels_must_be_class_indices():
    for labels in ([], [0, -1], [0.5, 1.0], [[0, 1]]):
        with pytest.raises(SslpipeError, match="labels"):
            balanced_subset(labels, 0.5)


def _read_tars(paths):
    """[(key, [(member name, bytes)])] over the tars, in order, read independently of the code under test."""
    samples = []
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                key = member.name.split(".", 1)[0]
                if not samples or samples[-1][0] != key:
                    samples.append((key, []))
                samples[-1][1].append((member.name, tar.extractfile(member).read()))
    return samples


def test_subset_shards_hold_exactly_the_chosen_samples_and_load(photo_shards, tmp_path):
    source = _read_tars(sorted(glob.glob(photo_shards)))
    labels = [int(dict(members)[f"{key}.cls"]) for key, members in source]
    keys = {source[i][0] for i in balanced_subset(labels, 0.4, seed=1)}
    assert 0 < len(keys) < len(source)

    pattern = write_subset_shards(photo_shards, keys, tmp_path / "out", name="train_40pct", shard_samples=3)
    assert pattern == str(tmp_path / "out" / "train_40pct-*.tar")
    tars = sorted(glob.glob(pattern))
    assert len(tars) == -(-len(keys) // 3)
    assert _read_tars(tars) == [sample for sample in source if sample[0] in keys]  # order, names, bytes
    for tar in tars:
        index = read_index(Path(tar).with_suffix(".idx"))
        with open(tar, "rb") as f:
            for sample in index:
                for _, offset, size, name in sample:
                    f.seek(offset)
                    assert f.read(size) == dict(dict(source)[name.split(".")[0]])[name]

    loader = ViewLoader("eval", pattern, batch_size=4, train=False)
    seen = [key for batch in loader for key in batch.keys]
    assert sorted(seen) == sorted(keys)


def test_subset_shards_refuse_missing_keys_and_stale_output(photo_shards, tmp_path):
    with pytest.raises(SslpipeError, match="2 of the 2 keys.*nope"):
        write_subset_shards(photo_shards, ["nope", "nope2"], tmp_path)
    with pytest.raises(SslpipeError, match="no keys"):
        write_subset_shards(photo_shards, [], tmp_path)
    key = _read_tars(sorted(glob.glob(photo_shards))[:1])[0][0]
    write_subset_shards(photo_shards, [key], tmp_path)
    with pytest.raises(SslpipeError, match="already holds"):
        write_subset_shards(photo_shards, [key], tmp_path)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["subset-000000.idx", "subset-000000.tar"]
