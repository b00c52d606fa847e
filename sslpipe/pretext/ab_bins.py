"""Colorization's output space (Zhang, Isola, Efros 2016, section 2.1): the ab plane of CIE Lab
quantized on a grid of 10, the Q = 313 in-gamut bins, the soft encoding of an ab value onto its
nearest bins, and the class-rebalancing weights from a prior over the bins.

The bins ship as `ab_bins_313.npy` beside this file: the reference's `resources/pts_in_hull.npy`
(richzhang/colorization, BSD-2-Clause), 313 (a, b) grid points, a in -90..100, b in -110..100.
`reached_ab_cells()` derives them here from every 8-bit sRGB colour (Kornia's `rgb_to_lab`): the
corners of the 10 x 10 cells those colours fall in are 309 points, all of them in the reference's
table; its 4 others, (40, 90), (100, -90), (100, -10) and (100, 0), lie 11.0-13.0 ab units (the
largest of |da|, |db|) from the nearest sRGB colour while grid points it leaves out come as near
as 10.7, so no distance rule over this conversion gives exactly its 313 (the table was made by a
rule it does not state; `tests/pretext/test_ab_bins.py` checks the 309 and the 4).

    bins = AbBins()                                   # a module: moves to the device with the method
    index, weight = bins.soft_encode(ab)              # (B, 2, h, w) -> (B, h, w, 10) each
    factor = rebalancing_factor(prior, gamma=0.5)     # (313,): a pixel weighs factor[index[..., 0]]
"""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

SHIPPED = Path(__file__).with_name("ab_bins_313.npy")
GRID = 10           # the bins' spacing in ab units
WINDOW = 3          # candidate cells on each side of a value's own: exact for 10 neighbours (tested)


@cache
def load_ab_bins() -> np.ndarray:
    """(313, 2) int64 ab bin centres, sorted by a then b (the reference's order)."""
    return np.load(SHIPPED)


def reached_ab_cells(chunk: int = 1 << 22) -> np.ndarray:
    """(309, 2) int64: the corners of the 10 x 10 ab cells reached by the 2^24 8-bit sRGB colours
    (Kornia's `rgb_to_lab`, D65), sorted; the module's docstring compares them with the bins."""
    from kornia.color import rgb_to_lab

    levels = torch.arange(256, dtype=torch.float32) / 255
    origin, side = -130, 27                      # cells of [-130, 140)^2: every Lab ab of an sRGB colour
    reached = torch.zeros(side, side, dtype=torch.bool)
    for start in range(0, 1 << 24, chunk):
        code = torch.arange(start, min(start + chunk, 1 << 24))
        rgb = torch.stack([levels[code >> 16], levels[(code >> 8) & 255], levels[code & 255]])
        ab = rgb_to_lab(rgb.view(3, 1, -1))[1:].reshape(2, -1).double()
        cell = torch.floor((ab - origin) / GRID).long()
        reached[cell[0], cell[1]] = True
    corners = torch.zeros(side + 1, side + 1, dtype=torch.bool)
    for da, db in itertools.product((0, 1), repeat=2):   # a cell's four corners
        corners[da:da + side, db:db + side] |= reached
    return (torch.nonzero(corners) * GRID + origin).numpy().astype(np.int64)


class AbBins(nn.Module):
    """The bins as device tensors: their centres and a lookup grid from ab cell to bin index.

    `soft_encode` scores only the (2 * WINDOW + 1)^2 grid points around each value's nearest one
    (49 instead of 313: 6x less memory than the dense (pixels, 313) distances), the same 10 nearest
    bins as a search over all 313 for every Lab value an sRGB colour has (tested)."""

    def __init__(self):
        super().__init__()
        centres = torch.from_numpy(load_ab_bins())
        origin = centres.min(0).values - WINDOW * GRID                        # the padded grid's
        cells = (centres - origin) // GRID
        lookup = torch.full((int(cells[:, 0].max()) + WINDOW + 1, int(cells[:, 1].max()) + WINDOW + 1), -1)
        lookup[cells[:, 0], cells[:, 1]] = torch.arange(len(centres))
        offsets = torch.arange(-WINDOW, WINDOW + 1)
        # Constants moved with the module, not saved: the checkpoint holds no copy of a shipped table.
        self.register_buffer("centres", centres.float(), persistent=False)
        self.register_buffer("origin", origin.float(), persistent=False)
        self.register_buffer("lookup", lookup, persistent=False)
        self.register_buffer("last_cell", torch.tensor(lookup.shape) - 1, persistent=False)
        self.register_buffer("window", torch.cartesian_prod(offsets, offsets), persistent=False)  # (49, 2)

    def __len__(self) -> int:
        return len(self.centres)

    def soft_encode(self, ab: torch.Tensor, neighbours: int = 10,
                    sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, h, w) ab values -> the `neighbours` nearest bins of each, nearest first, as (B, h, w, K)
        int64 indices and float32 Gaussian weights exp(-d^2 / 2 sigma^2) normalised to sum 1
        (the reference's `NNEncode`: K = 10, sigma = 5)."""
        values = ab.float().permute(0, 2, 3, 1).unsqueeze(-2)                        # (B, h, w, 1, 2)
        own = torch.round((values - self.origin) / GRID).long()                      # the nearest cell
        cells = (own + self.window).clamp(min=0)                                      # (B, h, w, 49, 2)
        cells = torch.minimum(cells, self.last_cell)
        candidates = self.lookup[cells[..., 0], cells[..., 1]]                       # (B, h, w, 49), -1: none
        distance = (values - self.centres[candidates.clamp(min=0)]).square().sum(-1)
        distance = distance.masked_fill(candidates < 0, float("inf"))
        distance, nearest = distance.topk(neighbours, dim=-1, largest=False)          # ascending
        index = candidates.gather(-1, nearest)
        weight = torch.softmax(-distance / (2 * sigma ** 2), dim=-1)                 # = exp(...) / sum
        return index, weight

    def nearest(self, ab: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) ab -> (B, h, w) int64: each value's nearest bin."""
        return self.soft_encode(ab, neighbours=1)[0][..., 0]


def smoothed_prior(counts: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """(313,) counts of the nearest bins over a dataset -> (313,) float64 probabilities, smoothed by
    a Gaussian of `sigma` ab units over the bin centres (the paper's G_sigma; sigma 0: none)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (len(load_ab_bins()),) or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"counts must be {len(load_ab_bins())} non-negative bin counts, not all zero; "
                         f"got shape {counts.shape}, sum {counts.sum()}")
    if sigma > 0:
        centres = load_ab_bins().astype(np.float64)
        kernel = np.exp(-((centres[:, None] - centres[None]) ** 2).sum(-1) / (2 * sigma ** 2))
        counts = kernel @ counts
    return counts / counts.sum()


def rebalancing_factor(prior: np.ndarray, gamma: float = 0.5, alpha: float = 1.0) -> np.ndarray:
    """(313,) prior probabilities -> (313,) float64 class-rebalancing factors (the reference's
    `PriorFactor`): mix the prior with the uniform over the bins it reaches, (1 - gamma) p + gamma u,
    raise to -alpha, and scale so that the expected factor sum_q p_q factor_q is 1. A bin the prior
    never reaches weighs as the rarest one it does (the reference's would be infinite)."""
    prior = np.asarray(prior, dtype=np.float64)
    if not 0 <= gamma <= 1 or alpha < 0:
        raise ValueError(f"gamma must be in [0, 1] and alpha >= 0, got {gamma} and {alpha}")
    reached = prior > 0
    uniform = reached / reached.sum()
    factor = np.zeros_like(prior)
    factor[reached] = ((1 - gamma) * prior[reached] + gamma * uniform[reached]) ** -alpha
    factor /= (prior * factor).sum()
    factor[~reached] = factor[reached].max()
    return factor
