"""Colorization's output space: the 313 shipped bins and what a derivation from sRGB gives of them,
the soft encoding against a search over all bins, the Lab conversion against the CIE formulas, the
prior's smoothing and the rebalancing factors against the reference's PriorFactor, step by step."""

import numpy as np
import pytest
import torch
from kornia.color import lab_to_rgb, rgb_to_lab

from sslpipe.pretext.ab_bins import AbBins, load_ab_bins, reached_ab_cells, rebalancing_factor, smoothed_prior


def _srgb_colours(step=5):
    """(1, 3, 1, n) RGB in [0, 1]: the 8-bit levels 0, step, ..., and 255, every combination."""
    levels = torch.tensor(sorted(set(range(0, 256, step)) | {255}), dtype=torch.float32) / 255
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    return torch.stack([r.ravel(), g.ravel(), b.ravel()]).view(1, 3, 1, -1)


def test_the_shipped_bins_are_313_points_of_the_10_grid():
    bins = load_ab_bins()
    assert bins.shape == (313, 2) and bins.dtype == np.int64
    assert len({tuple(p) for p in bins.tolist()}) == 313 and (bins % 10 == 0).all()
    assert bins.tolist() == sorted(bins.tolist())
    assert bins.min(0).tolist() == [-90, -110] and bins.max(0).tolist() == [100, 100]


def test_the_cells_reached_by_srgb_are_309_of_the_313_bins():
    derived = {tuple(p) for p in reached_ab_cells().tolist()}
    shipped = {tuple(p) for p in load_ab_bins().tolist()}
    assert len(derived) == 309 and derived <= shipped
    assert shipped - derived == {(40, 90), (100, -90), (100, -10), (100, 0)}


def _cie_lab(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) sRGB in [0, 1] -> (n, 3) CIE Lab, D65, float64, from the standards' formulas."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                             [0.019334, 0.119193, 0.950227]]).T / np.array([0.950456, 1.0, 1.088754])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def test_kornia_lab_matches_the_cie_formulas_and_round_trips():
    rgb = _srgb_colours(step=15)
    lab = rgb_to_lab(rgb)
    expected = _cie_lab(rgb[0, :, 0].T.double().numpy())
    assert np.abs(lab[0, :, 0].T.double().numpy() - expected).max() < 0.05
    assert (lab_to_rgb(lab) - rgb).abs().max() < 1e-3


def test_soft_encoding_finds_the_nearest_bins_of_every_srgb_colour():
    bins = AbBins()
    ab = rgb_to_lab(_srgb_colours())[:, 1:]                                       # (1, 2, 1, 140608)
    index, weight = bins.soft_encode(ab, neighbours=10, sigma=5.0)
    assert index.shape == weight.shape == (1, 1, ab.shape[-1], 10)
    values = ab[0, :, 0].T.double()
    distance = torch.cdist(values, torch.from_numpy(load_ab_bins()).double())     # (n, 313), all bins
    expected = distance.topk(10, largest=False).values
    found = distance.gather(1, index[0, 0])
    # The same 10 distances (ties at the 10th may pick another bin of equal distance), nearest first.
    assert torch.allclose(found, expected, atol=1e-3)
    assert (found[:, 1:] >= found[:, :-1] - 1e-4).all()
    gauss = torch.exp(-found ** 2 / (2 * 5.0 ** 2))
    assert torch.allclose(weight[0, 0].double(), gauss / gauss.sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(weight.sum(-1), torch.ones(()), atol=1e-5)
    argmax = index[0, 0].gather(1, weight[0, 0].argmax(1, keepdim=True))[:, 0]
    assert torch.allclose(distance.gather(1, argmax[:, None])[:, 0], distance.min(1).values, atol=1e-3)
    assert torch.equal(bins.nearest(ab)[0, 0], index[0, 0, :, 0])


def test_prior_smoothing_and_rebalancing_follow_the_reference():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, 313).astype(float)
    counts[rng.choice(313, 40, replace=False)] = 0
    assert np.allclose(smoothed_prior(counts, sigma=0), counts / counts.sum())
    smooth = smoothed_prior(counts, sigma=5.0)
    centres = load_ab_bins().astype(float)
    for q in (0, 100, 312):                                           # one bin at a time, by its formula
        kernel = [np.exp(-((centres[q] - centres[r]) ** 2).sum() / 50) for r in range(313)]
        total = sum(np.exp(-((centres[s] - centres[r]) ** 2).sum() / 50) * counts[r]
                    for s in range(313) for r in range(313) if counts[r])
        assert smooth[q] == pytest.approx(np.dot(kernel, counts) / total, rel=1e-6)
    # PriorFactor(alpha=1, gamma=0.5): mixed with the uniform over the reached bins, inverted, scaled.
    prior = counts / counts.sum()
    reached = [q for q in range(313) if prior[q] > 0]
    mixed = {q: 0.5 * prior[q] + 0.5 / len(reached) for q in reached}
    scale = sum(prior[q] / mixed[q] for q in reached)
    factor = rebalancing_factor(prior, gamma=0.5, alpha=1.0)
    for q in reached:
        assert factor[q] == pytest.approx(1 / mixed[q] / scale, rel=1e-9)
    assert (prior * factor).sum() == pytest.approx(1.0)
    assert (factor[prior == 0] == max(factor[q] for q in reached)).all()
    assert np.allclose(rebalancing_factor(prior, gamma=0.0, alpha=0.0)[reached], 1.0)


@pytest.mark.parametrize("counts, gamma", [(np.zeros(313), 0.5), (np.ones(312), 0.5), (np.ones(313), 1.5)])
def test_prior_refusals(counts, gamma):
    with pytest.raises(ValueError, match="counts|gamma"):
        rebalancing_factor(smoothed_prior(counts), gamma=gamma)
