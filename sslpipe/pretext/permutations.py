"""Jigsaw's permutation set: `count` permutations of the tiles chosen greedily for the largest
average Hamming distance, as bbrattoli/JigsawPuzzlePytorch `select_permutations.py --selection max`
(the procedure of Noroozi & Favaro 2016, section 3.2): the first drawn at random, then each next
one the candidate with the largest mean distance to those already chosen (ties: the first in
lexicographic order). The 1000 of seed 0 ship as `permutations_1000.npy` beside this file;
`tests/pretext/test_permutations.py` regenerates and compares them.

    table = load_permutations(1000)                  # (1000, 9) int64, rows are tile orders
    mean, minimum = hamming_stats(table)             # the shipped table's: in docs/benchmarks.md
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

SHIPPED = Path(__file__).with_name("permutations_1000.npy")


def max_hamming_permutations(count: int = 1000, tiles: int = 9, seed: int = 0,
                             progress: bool = False) -> np.ndarray:
    """(count, tiles) int64: the greedy max-average-Hamming set (the module's docstring)."""
    total = math.factorial(tiles)
    if not 1 <= count <= total:
        raise ValueError(f"count must be between 1 and {tiles}! = {total}, got {count}")
    candidates = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)  # (tiles!, tiles)
    # Running sum of each candidate's distance to the chosen ones: the mean's argmax is the sum's.
    distance = np.zeros(len(candidates), dtype=np.int64)
    chosen = np.empty(count, dtype=np.int64)
    pick = int(np.random.default_rng(seed).integers(len(candidates)))
    for i in tqdm(range(count), desc="permutations", unit="perm", disable=not progress):
        chosen[i] = pick
        distance += (candidates != candidates[pick]).sum(axis=1)
        distance[chosen[:i + 1]] = -1   # each permutation once
        pick = int(distance.argmax())
    return candidates[chosen].astype(np.int64)


def hamming_stats(table: np.ndarray) -> tuple[float, int]:
    """Mean and minimum Hamming distance over the distinct pairs of rows of `table`."""
    if len(table) < 2:
        raise ValueError("the Hamming statistics of a table need at least two rows")
    pairwise = (table[:, None, :] != table[None, :, :]).sum(axis=2)
    upper = pairwise[np.triu_indices(len(table), k=1)]
    return float(upper.mean()), int(upper.min())


def load_permutations(count: int = 1000, tiles: int = 9, seed: int = 0) -> np.ndarray:
    """The shipped table when asked for it (1000 of 9 tiles, seed 0), else generated (seconds)."""
    if (count, tiles, seed) == (1000, 9, 0) and SHIPPED.is_file():
        return np.load(SHIPPED).astype(np.int64)
    return max_hamming_permutations(count, tiles, seed)
