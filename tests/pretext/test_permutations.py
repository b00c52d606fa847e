"""Jigsaw's permutation set: the shipped table is what the generator makes from seed 0, its rows
are distinct permutations, its Hamming statistics are the reference's (bbrattoli's
permutations_1000.npy: mean 8.005, minimum 2), and the greedy step picks the farthest candidate."""

import itertools

import numpy as np
import pytest

from sslpipe.pretext.permutations import SHIPPED, hamming_stats, load_permutations, max_hamming_permutations


def test_the_shipped_table_is_the_generators_and_has_the_reference_statistics():
    table = load_permutations(1000)
    assert np.array_equal(np.load(SHIPPED), max_hamming_permutations(1000, seed=0))
    assert table.shape == (1000, 9) and table.dtype == np.int64
    assert all(sorted(row) == list(range(9)) for row in table.tolist())
    assert len({tuple(row) for row in table.tolist()}) == 1000
    mean, minimum = hamming_stats(table)
    assert mean == pytest.approx(8.005, abs=0.01) and minimum == 2


def test_each_pick_is_the_candidate_farthest_on_average_from_those_before():
    table = max_hamming_permutations(6, tiles=4, seed=3)
    everything = np.array(list(itertools.permutations(range(4))))
    for i in range(1, len(table)):
        mean = np.array([(table[:i] != c).sum(1).mean() for c in everything])
        mean[[np.flatnonzero((everything == row).all(1))[0] for row in table[:i]]] = -1
        assert (table[i] == everything[mean.argmax()]).all()  # ties: the first, lexicographically


def test_a_small_set_by_brute_force_statistics_and_refusals():
    table = max_hamming_permutations(24, tiles=4)
    assert len({tuple(r) for r in table.tolist()}) == 24  # every permutation of 4, each once
    pairs = [(a != b).sum() for a, b in itertools.combinations(table, 2)]
    assert hamming_stats(table) == (pytest.approx(np.mean(pairs)), min(pairs))
    with pytest.raises(ValueError, match="count must be between 1 and 4! = 24, got 25"):
        max_hamming_permutations(25, tiles=4)
    with pytest.raises(ValueError, match="two rows"):
        hamming_stats(table[:1])
