"""The photometric stage against reference formulas, its random draws, and its output layout."""

import colorsys
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from sslpipe.pipeline.ops.color_jitter import ColorJitterOp
from sslpipe.pipeline.photometric import Draws, PhotometricStage
from sslpipe.pipeline.spec import Blur, ColorJitter, Normalize, Solarize, ViewSpec, load_spec

GRAY = np.array([0.2989, 0.587, 0.114])  # torchvision's luma weights
FULL = dict(color_jitter=ColorJitter(p=1.0, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2),
            grayscale=1.0, blur=Blur(p=1.0, kernel_size=5), solarize=Solarize(p=1.0))


def view(size=16, normalize=None, **kwargs):
    return ViewSpec.create(name="v", size=size, normalize=normalize, **kwargs)


def images(n, size=16, seed=0):
    """uint8 (n, 3, size, size), channels-last strided as it comes from an NHWC buffer."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)).permute(0, 3, 1, 2)


# The flat names of these tests -> (op, parameter) of the op table.
FIELDS = dict(jitter=("color_jitter", "on"), brightness=("color_jitter", "brightness"),
              contrast=("color_jitter", "contrast"), saturation=("color_jitter", "saturation"),
              hue=("color_jitter", "hue"), order=("color_jitter", "order"), gray=("grayscale", "on"),
              blur=("blur", "on"), sigma=("blur", "sigma"), solarize=("solarize", "on"),
              threshold=("solarize", "threshold"))


def params(n, **fields):
    """Identity parameters for n samples, with `fields` overriding (lists or tensors)."""
    base = dict(jitter=[True] * n, brightness=[1.0] * n, contrast=[1.0] * n, saturation=[1.0] * n,
                hue=[0.0] * n, order=[[0, 1, 2, 3]] * n, gray=[False] * n, blur=[False] * n,
                sigma=[1.0] * n, solarize=[False] * n, threshold=[1.0] * n)
    base.update(fields)
    ops = {}
    for name, value in base.items():
        op, key = FIELDS[name]
        integer = name in ("jitter", "gray", "blur", "solarize", "order")
        dtype = None if integer else torch.float32
        ops.setdefault(op, {})[key] = torch.as_tensor(value, dtype=dtype)
    return Draws(ops)


def drawn(draws, name):
    """A drawn parameter by the flat names above."""
    op, key = FIELDS[name]
    return draws.ops[op][key]


def flat(draws):
    """The drawn parameters as attributes named as above (those of the stage's ops)."""
    return type("Flat", (), {name: drawn(draws, name) for name, (op, _) in FIELDS.items() if op in draws.ops})


def as_float(imgs):
    return imgs.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255  # (N, H, W, 3)


def ref_brightness(x, f):
    return np.clip(f * x, 0, 1)


def ref_contrast(x, f):
    return np.clip(f * x + (1 - f) * (x @ GRAY).mean(), 0, 1)


def ref_saturation(x, f):
    return np.clip(f * x + (1 - f) * (x @ GRAY)[..., None], 0, 1)


def ref_hue(x, h):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        hh, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = colorsys.hsv_to_rgb((hh + h) % 1.0, s, v)
    return out


REFS = [ref_brightness, ref_contrast, ref_saturation, ref_hue]


def run(stage, imgs, p):
    return stage.apply(imgs, p).permute(0, 2, 3, 1).double().numpy()


@pytest.mark.parametrize("op, factor", [(0, 1.7), (0, 0.3), (1, 1.6), (1, 0.2), (2, 1.8), (2, 0.0),
                                        (3, 0.2), (3, -0.35)])
def test_each_jitter_op_matches_its_reference(op, factor):
    stage = PhotometricStage([view(color_jitter=ColorJitter(1, 0.9, 0.9, 0.9, 0.5))], 2, "cpu")
    imgs = images(2, 8)
    name = ("brightness", "contrast", "saturation", "hue")[op]
    order = [op] + [k for k in range(4) if k != op]
    # Sample 1 is not jittered: it must come back exactly.
    p = params(2, jitter=[True, False], order=[order, order], **{name: [factor, 1.0 if op < 3 else 0.0]})
    out = run(stage, imgs, p)
    x = as_float(imgs)
    np.testing.assert_allclose(out[0], REFS[op](x[0], factor), atol=2e-5)
    assert not np.allclose(out[0], x[0], atol=1e-3)
    np.testing.assert_array_equal(out[1], x[1].astype(np.float32))


def test_random_order_is_honoured_per_sample():
    stage = PhotometricStage([view(color_jitter=ColorJitter(1, 0.9, 0.9, 0.9, 0.5))], 2, "cpu")
    imgs = images(1, 8).expand(2, -1, -1, -1)
    factors = dict(brightness=1.6, contrast=0.4, saturation=1.7, hue=0.3)
    orders = [[0, 1, 2, 3], [3, 2, 1, 0]]
    p = params(2, order=orders, **{k: [v, v] for k, v in factors.items()})
    out = run(stage, imgs, p)
    values = list(factors.values())
    for i, order in enumerate(orders):
        ref = as_float(imgs)[i]
        for op in order:
            ref = REFS[op](ref, values[op])
        np.testing.assert_allclose(out[i], ref, atol=2e-5)
    assert not np.allclose(out[0], out[1], atol=1e-2)  # the two orders really differ


def test_ops_no_view_uses_are_skipped():
    # Brightness alone: a hue round trip with a zero shift would not leave the values bit-exact.
    stage = PhotometricStage([view(color_jitter=ColorJitter(1.0, 0.5, 0.0, 0.0, 0.0))], 2, "cpu")
    imgs = images(2, 8)
    p = stage.sample(0)
    expected = (imgs.float() / 255 * drawn(p, "brightness").view(-1, 1, 1, 1)).clamp(0, 1)
    assert torch.equal(stage.apply(imgs, p), expected)


def test_grayscale_uses_torchvision_weights():
    stage = PhotometricStage([view(grayscale=1.0)], 4, "cpu")
    imgs = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    for c in range(3):
        imgs[c, c] = 255
    imgs[3] = 255
    out = stage.apply(imgs, params(4, gray=[True, True, True, False]))
    for c, w in enumerate(GRAY):
        torch.testing.assert_close(out[c], torch.full((3, 4, 4), w, dtype=torch.float32))
    assert torch.equal(out[3], torch.ones(3, 4, 4))


def test_blur_matches_a_reflect_padded_separable_reference():
    stage = PhotometricStage([view(size=20, blur=Blur(p=1.0, kernel_size=7))], 3, "cpu")
    imgs = images(3, 20)
    sigmas = [0.3, 1.9, 1.0]
    out = run(stage, imgs, params(3, blur=[True, True, False], sigma=sigmas))
    x = as_float(imgs)
    for i, sigma in enumerate(sigmas[:2]):
        t = np.arange(7) - 3
        k = np.exp(-t ** 2 / (2 * sigma ** 2))
        k /= k.sum()
        # scipy's 'mirror' is torch's 'reflect': mirrored about the edge pixel, which is not repeated
        ref = correlate1d(correlate1d(x[i], k, axis=0, mode="mirror"), k, axis=1, mode="mirror")
        np.testing.assert_allclose(out[i], ref, atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 0.05  # the two sigmas give different results
    np.testing.assert_array_equal(out[2], x[2].astype(np.float32))


def test_solarize_inverts_at_and_above_the_threshold():
    stage = PhotometricStage([view(solarize=Solarize(p=1.0))], 2, "cpu")
    imgs = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, -1, -1)
    threshold = (torch.tensor(128.0) / 255).item()
    out = stage.apply(imgs, params(2, solarize=[True, False], threshold=[threshold, threshold]))
    x = imgs.float() / 255
    assert torch.equal(out[0], torch.where(x[0] >= threshold, 1 - x[0], x[0]))
    assert out[0].flatten()[128] == 1 - x[0].flatten()[128] and out[0].flatten()[127] == x[0].flatten()[127]
    assert torch.equal(out[1], x[1])


def test_normalize_per_view_and_switched_off():
    norm = Normalize(mean=(0.1, 0.5, 0.9), std=(0.5, 0.25, 2.0))
    views = [view(normalize=norm), view(normalize=None)]
    imgs = images(4, 8)
    x = imgs.float() / 255
    out = PhotometricStage(views, 2, "cpu")(imgs, 0)
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)
    torch.testing.assert_close(out[:2], (x[:2] - mean) / std)
    assert torch.equal(out[2:], x[2:])
    off = PhotometricStage(views, 2, "cpu", normalize=False)(imgs, 0)
    assert torch.equal(off, x)


def test_eval_view_is_only_normalized():
    (center,) = load_spec("eval").views
    imgs = images(3, 32)
    out = PhotometricStage([center], 3, "cpu")(imgs, 0)
    mean = torch.tensor(center.normalize.mean).view(3, 1, 1)
    std = torch.tensor(center.normalize.std).view(3, 1, 1)
    assert torch.equal(out, (imgs.float() / 255 - mean) / std)


def fraction_ok(mask, p):
    n = mask.numel()
    return abs(mask.float().mean().item() - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_sampled_parameters_follow_the_spec():
    cj = ColorJitter(p=0.8, brightness=0.4, contrast=1.5, saturation=0.2, hue=0.1)
    v = view(size=96, color_jitter=cj, grayscale=0.2, blur=Blur(p=0.5, sigma=(0.1, 2.0)),
             solarize=Solarize(p=0.2, threshold=0.3))
    stage = PhotometricStage([v, v], 300, "cpu")
    draws = stage.sample(1)
    p = flat(draws)
    assert all(drawn(draws, f).shape[0] == 600 for f in FIELDS)
    assert fraction_ok(p.jitter, 0.8) and fraction_ok(p.gray, 0.2)
    assert fraction_ok(p.blur, 0.5) and fraction_ok(p.solarize, 0.2)
    assert not fraction_ok(p.jitter, 0.7)  # the tolerance is tight enough to notice a wrong p
    for name, lo, hi in [("brightness", 0.6, 1.4), ("contrast", 0.0, 2.5), ("saturation", 0.8, 1.2),
                         ("hue", -0.1, 0.1)]:
        values = getattr(p, name)
        on = values[p.jitter]
        assert values.dtype == torch.float32
        assert lo <= on.min() <= lo + 0.05 * (hi - lo) and hi - 0.05 * (hi - lo) <= on.max() <= hi, name
        assert torch.all(values[~p.jitter] == (0.0 if name == "hue" else 1.0))
    sigma = p.sigma[p.blur]
    assert 0.1 <= sigma.min() < 0.3 and 1.8 < sigma.max() <= 2.0
    assert torch.all(p.threshold == torch.tensor(0.3))
    assert p.order.dtype == torch.int64
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(600, 4))
    assert {tuple(r) for r in p.order.tolist()} == set(itertools.permutations(range(4)))


def test_byol_asymmetric_views_draw_per_view():
    views = load_spec("byol").views
    stage = PhotometricStage(views, 500, "cpu")
    draws = stage.sample(2)
    p = flat(draws)
    assert torch.all(p.blur[:500]) and fraction_ok(p.blur[500:], 0.1)
    assert not torch.any(p.solarize[:500]) and fraction_ok(p.solarize[500:], 0.2)
    assert fraction_ok(p.jitter[:500], 0.8) and fraction_ok(p.jitter[500:], 0.8)
    assert p.saturation.min() >= 0.8 and p.saturation.max() <= 1.2
    out = stage(images(1000, 24), 2)  # 24 px fits the 23-px kernel
    assert out.shape == (1000, 3, 24, 24) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_dtype_layout_and_range(dtype, channels_last):
    stage = PhotometricStage([view(**FULL), view(**FULL)], 3, "cpu", normalize=False, dtype=dtype,
                             channels_last=channels_last)
    imgs = images(6)
    out = stage(imgs, 0)
    assert out.shape == (6, 3, 16, 16) and out.dtype == dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    assert out.min() >= 0 and out.max() <= 1
    # The input's strides do not matter.
    same = stage(imgs.contiguous(), 0)
    assert torch.equal(out, same)


def test_seeded_draws_reproduce_and_differ_across_seeds():
    stage = PhotometricStage([view(**FULL)] * 2, 4, "cpu")
    imgs = images(8)
    a = stage(imgs, 5)
    b = stage(imgs, 5)
    c = stage(imgs, 6)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("value", [0, 255])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_black_and_white_images_stay_finite(value, dtype):
    stage = PhotometricStage([view(**FULL), view(color_jitter=ColorJitter(p=1.0, hue=0.5))], 4, "cpu",
                             dtype=dtype)
    imgs = torch.full((8, 3, 16, 16), value, dtype=torch.uint8)
    out = stage(imgs, 0)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_invalid_groups_are_rejected():
    with pytest.raises(ValueError, match="kernel size"):
        PhotometricStage([view(blur=Blur(kernel_size=3)), view(blur=Blur(kernel_size=5))], 2, "cpu")
    with pytest.raises(ValueError, match="one size"):
        PhotometricStage([view(size=16), view(size=32)], 2, "cpu")
    stage = PhotometricStage([view()], 2, "cpu")
    with pytest.raises(ValueError, match="uint8"):
        stage(images(3), 0)
    with pytest.raises(ValueError, match="uint8"):
        stage(images(2).float(), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    views = load_spec("byol").views + load_spec("simclr").views
    stage = PhotometricStage(views, 8, "cuda", dtype=torch.bfloat16, channels_last=True)
    imgs = images(32, 224).cuda()
    stage(imgs, 0)  # warm up: lazy CUDA initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = stage(imgs, 1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device.type == "cuda" and torch.isfinite(out.float()).all()


def test_cpu_gather_path_equals_the_gpu_select_path():
    """On the CPU each op runs on its selected samples only; on a GPU on all, then `torch.where`."""
    spec = load_spec("byol")
    stage = PhotometricStage(spec.views, 24, "cpu", normalize=True)
    imgs = images(48, size=32, seed=3)
    p = stage.sample(5)
    assert 0 < int(drawn(p, "blur").sum()) < 48 and 0 < int(drawn(p, "solarize").sum()) < 48  # both kinds
    gathered = stage.apply(imgs, p)
    selected = PhotometricStage(spec.views, 24, "cpu", normalize=True, strategy="select").apply(imgs, p)
    # Equal up to float32 rounding (a fused multiply-add here, two roundings there; x / std against
    # x * (1 / std)), which the normalization's 1 / std (4.4) scales up.
    assert torch.allclose(gathered, selected, atol=1e-5)


def test_cpu_blocks_cover_the_batch_once_with_one_jitter_order_each():
    stage = PhotometricStage(load_spec("simclr").views, 40, "cpu")
    assert stage.cpu_block == 8 and PhotometricStage([view(size=96)], 1, "cpu").cpu_block == 43
    draws = stage.sample(3)
    p = flat(draws)
    seen = []
    for keys, index in stage._cpu_blocks(draws.ops):
        assert 0 < len(index) <= stage.cpu_block
        order = ColorJitterOp.order_of(keys["color_jitter"])
        if order:
            assert p.jitter[index].all() and (p.order[index] == torch.tensor(order)).all()
        else:
            assert not p.jitter[index].any()
        seen += index.tolist()
    assert sorted(seen) == list(range(80))


def test_cpu_stage_runs_on_one_thread_and_restores_the_count(monkeypatch):
    stage = PhotometricStage([view(**FULL)], 2, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stage(images(2), 0)
        assert torch.get_num_threads() == 2

        def fail(*args):
            assert torch.get_num_threads() == 1
            raise RuntimeError("failed inside")

        monkeypatch.setattr(stage, "_gathered", fail)
        with pytest.raises(RuntimeError, match="failed inside"):
            stage(images(2), 0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_the_blocks_strategy_is_for_the_cpu_only():
    with pytest.raises(ValueError, match="strategy='blocks' is the CPU's"):
        PhotometricStage([view()], 2, "cuda", strategy="blocks")


def test_the_compiled_select_path_equals_eager():
    """torch.compile of the device path (the CUDA default), here with the CPU backend: BYOL's two
    views (blur and solarize drawn differently) and a channels-last output."""
    torch._dynamo.reset()
    views = load_spec("byol").views
    imgs = images(16, size=32, seed=4)
    eager = PhotometricStage(views, 8, "cpu", strategy="select", channels_last=True)
    compiled = PhotometricStage(views, 8, "cpu", strategy="select", channels_last=True, compile=True)
    p = eager.sample(3)
    assert 0 < int(drawn(p, "solarize").sum()) < 16 and 0 < int(drawn(p, "jitter").sum()) < 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled.apply(imgs, p)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # no fallback to eager
    assert compiled._compiled is not None
    assert out.is_contiguous(memory_format=torch.channels_last)
    # Equal up to float32 rounding: inductor reorders and fuses the arithmetic.
    assert torch.allclose(out, eager.apply(imgs, p), atol=1e-5)


def test_a_failed_compile_warns_once_and_runs_eagerly():
    views = load_spec("simclr").views
    stage = PhotometricStage(views, 2, "cpu", strategy="select", compile=True)

    def broken(images, params):
        raise RuntimeError("no C++ compiler\nmore detail")

    stage._compiled = broken
    imgs, p = images(4, size=16), stage.sample(1)
    failed = r"torch.compile failed .*RuntimeError: no C\+\+ compiler\); running it"
    with pytest.warns(UserWarning, match=failed):
        out = stage.apply(imgs, p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = stage.apply(imgs, p)
    assert not caught  # warned once only
    reference = PhotometricStage(views, 2, "cpu", strategy="select").apply(imgs, p)
    assert torch.equal(out, reference) and torch.equal(again, reference)
    with pytest.raises(ValueError, match="compile=True compiles the select strategy"):
        PhotometricStage(views, 2, "cpu", strategy="blocks", compile=True)
