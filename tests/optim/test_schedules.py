"""Per-step schedules: shapes, endpoints, shapes of the curves, validation."""

import math

import numpy as np
import pytest

from sslpipe.optim.schedules import constant, cosine_to_one, scale_lr, warmup_cosine


def test_warmup_cosine_length_dtype_and_endpoints():
    s = warmup_cosine(1.0, 0.01, total_steps=100, warmup_steps=10, warmup_start=0.1)
    assert s.shape == (100,) and s.dtype == np.float64
    assert s[0] == pytest.approx(0.1)
    assert s[10] == pytest.approx(1.0)          # the first cosine step is base
    assert s[-1] == pytest.approx(0.01)         # the last step is final


def test_warmup_is_linear_and_reaches_base_at_warmup_steps():
    s = warmup_cosine(2.0, 0.0, total_steps=50, warmup_steps=8)
    np.testing.assert_allclose(s[:9], 2.0 * np.arange(9) / 8)
    assert np.allclose(np.diff(s[:9]), 0.25)


def test_cosine_part_is_monotone_with_half_way_at_the_middle():
    s = warmup_cosine(1.0, 0.0, total_steps=101)
    assert np.all(np.diff(s) < 0)
    assert s[0] == 1.0 and s[-1] == pytest.approx(0.0, abs=1e-15)
    assert s[50] == pytest.approx(0.5)
    rising = warmup_cosine(0.1, 1.0, total_steps=20)  # final > base also works
    assert np.all(np.diff(rising) > 0)


def test_warmup_cosine_edge_cases():
    np.testing.assert_allclose(warmup_cosine(1.0, 0.0, total_steps=1), [1.0])
    np.testing.assert_allclose(warmup_cosine(1.0, 0.0, total_steps=4, warmup_steps=4), [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(warmup_cosine(1.0, 0.0, total_steps=3, warmup_steps=2), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(total_steps=0), "total_steps"), (dict(total_steps=10, warmup_steps=-1), "warmup_steps"),
    (dict(total_steps=10, warmup_steps=11), "warmup_steps"),
])
def test_warmup_cosine_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        warmup_cosine(1.0, 0.0, **kwargs)


def test_integer_arguments_required():
    with pytest.raises(TypeError, match="total_steps"):
        warmup_cosine(1.0, 0.0, total_steps=10.0)
    assert len(warmup_cosine(1.0, 0.0, total_steps=np.int64(7), warmup_steps=np.int32(2))) == 7


def test_cosine_to_one():
    s = cosine_to_one(0.996, 1000)
    assert s.shape == (1000,) and s.dtype == np.float64
    assert s[0] == pytest.approx(0.996) and s[-1] == 1.0
    assert np.all(np.diff(s) > 0) and np.all(s <= 1.0)
    t, T = 250, 999
    assert s[t] == pytest.approx(1 - (1 - 0.996) * (math.cos(math.pi * t / T) + 1) / 2)
    np.testing.assert_allclose(cosine_to_one(0.99, 1), [0.99])
    with pytest.raises(ValueError, match="base"):
        cosine_to_one(1.5, 10)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_to_one(0.99, 0)


def test_constant():
    s = constant(1e-6, 5)
    assert s.dtype == np.float64 and s.tolist() == [1e-6] * 5
    with pytest.raises(ValueError, match="total_steps"):
        constant(1.0, 0)


def test_scale_lr():
    assert scale_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scale_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scale_lr(0.05, 512, "linear") == pytest.approx(0.1)
    assert scale_lr(0.1, 512, "linear", reference=128) == pytest.approx(0.4)
    assert scale_lr(0.03, 4096, "none") == 0.03
    assert isinstance(scale_lr(1, 256, "linear"), float)


def test_scale_lr_errors():
    with pytest.raises(ValueError, match="'cubic'"):
        scale_lr(0.1, 256, "cubic")
    with pytest.raises(ValueError, match="batch_size"):
        scale_lr(0.1, 0, "linear")
    with pytest.raises(ValueError, match="reference"):
        scale_lr(0.1, 256, "linear", reference=0)
