"""The photometric operations against Kornia's, an independent implementation of the same formulas
(the reference-formula checks are in test_photometric.py), on random images and on the hue's
edge cases: ties between channels, gray, black and white pixels, shifts of a full half turn."""

import math

import pytest
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import filter2d_separable

from sslpipe.pipeline import color


def random_images(n=6, size=24, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def edge_pixels():
    """(1, 3, 1, P): primaries, secondaries, ties of two channels, grays, black and white."""
    pixels = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0.8, 0.8, 0.2),
              (0.8, 0.2, 0.8), (0.2, 0.8, 0.8), (0.3, 0.6, 0.6), (0.6, 0.3, 0.6), (0.6, 0.6, 0.3),
              (0.5, 0.5, 0.5), (0, 0, 0), (1, 1, 1), (0.9, 0.1, 0.0999), (1e-7, 0, 2e-7)]
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, 3, 1, -1)


@pytest.mark.parametrize("factor", [0.0, 0.4, 1.0, 1.9])
def test_brightness_contrast_saturation_match_kornia(factor):
    x = random_images()
    f = torch.full((len(x),), factor)
    torch.testing.assert_close(color.brightness(x, f), adjust_brightness_accumulative(x, f))
    # Kornia's luma weighs red 0.299, torchvision's (and ours) 0.2989: up to 1e-4 apart
    # (the exact torchvision formulas are checked in test_photometric.py).
    luma = dict(atol=1.5e-4, rtol=0) if factor != 1 else {}
    torch.testing.assert_close(color.contrast(x, f), adjust_contrast_with_mean_subtraction(x, f), **luma)
    torch.testing.assert_close(color.saturation(x, f), adjust_saturation_with_gray_subtraction(x, f), **luma)


def test_per_sample_factors_apply_to_their_own_sample():
    x = random_images(3)
    f = torch.tensor([0.5, 1.0, 1.5])
    for op in (color.brightness, color.contrast, color.saturation):
        out = op(x, f)
        for i in range(3):
            torch.testing.assert_close(out[i:i + 1], op(x[i:i + 1], f[i:i + 1]))
        assert torch.equal(out[1], x[1])  # factor 1 is an exact identity


@pytest.mark.parametrize("turns", [-0.5, -0.37, -0.1, 0.0, 0.05, 0.25, 0.5])
def test_hue_matches_kornia_on_random_and_edge_pixels(turns):
    for x in (random_images(seed=1), edge_pixels()):
        shift = torch.full((len(x),), turns)
        out = color.shift_hue(x, shift)
        torch.testing.assert_close(out, adjust_hue(x, shift * 2 * math.pi), atol=2e-6, rtol=0)
        assert torch.isfinite(out).all()


def test_hue_keeps_value_and_chroma_and_a_full_turn_is_the_identity():
    x = random_images(seed=2)
    out = color.shift_hue(x, torch.linspace(-0.5, 0.5, len(x)))
    torch.testing.assert_close(out.amax(dim=1), x.amax(dim=1))
    torch.testing.assert_close(out.amax(dim=1) - out.amin(dim=1), x.amax(dim=1) - x.amin(dim=1))
    # -0.5 and +0.5 are the same rotation.
    torch.testing.assert_close(color.shift_hue(x, torch.full((len(x),), -0.5)),
                               color.shift_hue(x, torch.full((len(x),), 0.5)), atol=2e-6, rtol=0)
    gray = x.mean(dim=1, keepdim=True).expand_as(x)
    assert torch.equal(color.shift_hue(gray, torch.full((len(x),), 0.3)), gray)


def test_grayscale_matches_kornia():
    x = random_images()
    torchvision_weights = torch.tensor(color.GRAY_WEIGHTS)
    torch.testing.assert_close(color.grayscale(x), rgb_to_grayscale(x, rgb_weights=torchvision_weights))
    assert color.to_grayscale(x).shape == x.shape


@pytest.mark.parametrize("kernel_size", [3, 9, 23])
def test_blur_matches_kornia(kernel_size):
    x = random_images(4, size=32, seed=3)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    t = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
    kernel = torch.exp(-(t / sigma[:, None]) ** 2 / 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    expected = filter2d_separable(x, kernel, kernel, border_type="reflect")
    torch.testing.assert_close(color.gaussian_blur(x, sigma, kernel_size), expected)


def test_solarize_per_sample_threshold():
    x = random_images(2)
    out = color.solarize(x, torch.tensor([0.5, 1.01]))
    assert torch.equal(out[0], torch.where(x[0] >= 0.5, 1 - x[0], x[0]))
    assert torch.equal(out[1], x[1])


def test_ops_leave_their_input_alone():
    x = random_images(2)
    before = x.clone()
    f = torch.tensor([0.5, 1.5])
    for op, arg in [(color.brightness, f), (color.contrast, f), (color.saturation, f),
                    (color.shift_hue, torch.tensor([0.1, -0.2])), (color.solarize, torch.tensor([0.5, 0.5]))]:
        op(x, arg)
    color.gaussian_blur(x, torch.tensor([1.0, 2.0]), 5)
    color.to_grayscale(x)
    assert torch.equal(x, before)
