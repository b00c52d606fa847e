"""Seeds derived from a tuple of integers and names: independent, reproducible random streams.

    seeds.derive(seed, epoch, rank, batch)       # the photometric draws of one batch
    seeds.derive(batch_seed, "color_jitter")     # one op's own stream within it

Names enter through CRC-32 (Python's `hash` of a string changes from process to process), the
tuple through NumPy's `SeedSequence`, whose outputs for different tuples are independent.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive(*parts: int | str) -> int:
    """A 63-bit seed (for `torch.Generator.manual_seed`) from `parts` (non-negative ints and strings)."""
    entropy = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)
