"""The color jitter with TensorFlow's semantics (`semantics: tf`, BYOL's official JAX code,
deepmind-research byol/utils/augmentations.py) against naive float64 references written per
pixel and per channel (`colorsys` for HSV), the whole jitter in its random order per sample,
and the host, device and compiled strategies against each other."""

import colorsys
import itertools
import warnings

import numpy as np
import pytest
import torch

from sslpipe.errors import SslpipeError
from sslpipe.pipeline import color
from sslpipe.pipeline.loader import _size_groups
from sslpipe.pipeline.ops.color_jitter import (
    HUE,
    KINDS,
    SATURATION,
    SATURATION_AND_HUE,
    SLOTS,
    ColorJitterOp,
    _slot_table,
)
from sslpipe.pipeline.photometric import Draws, PhotometricStage
from sslpipe.pipeline.spec import ColorJitter, ViewSpec, load_spec, parse_spec

TF = dict(p=1.0, brightness=0.4, contrast=0.6, saturation=0.8, hue=0.2, semantics="tf")


# Naive references, float64, on one (H, W, 3) image, pixel by pixel or channel by channel, each
# followed by the reference's `jnp.clip(..., 0, 1)`.

def ref_brightness(x, delta):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        out[idx] = min(max(x[idx] + delta, 0.0), 1.0)
    return out


def ref_contrast(x, factor):
    out = np.empty_like(x)
    for c in range(3):
        pixels = [x[i, j, c] for i in range(x.shape[0]) for j in range(x.shape[1])]
        mean = sum(pixels) / len(pixels)
        out[..., c] = np.clip(factor * (x[..., c] - mean) + mean, 0, 1)
    return out


def ref_saturation(x, factor):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = np.clip(colorsys.hsv_to_rgb(h, min(max(s * factor, 0.0), 1.0), v), 0, 1)
    return out


def ref_hue(x, delta):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = np.clip(colorsys.hsv_to_rgb((h + delta) % 1.0, s, v), 0, 1)
    return out


REFS = (ref_brightness, ref_contrast, ref_saturation, ref_hue)
NAMES = ("brightness", "contrast", "saturation", "hue")


def random_images(n=4, size=12, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def edge_images():
    """(2, 3, 4, 5): primaries, ties, grays, black, white, and saturated pixels whose saturation
    clips at 1 for a factor > 1 (s = 0.78, 0.9, 1)."""
    pixels = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0.8, 0.8, 0.2),
              (0.8, 0.2, 0.8), (0.2, 0.8, 0.8), (0.5, 0.5, 0.5), (0, 0, 0), (1, 1, 1), (0.9, 0.5, 0.2),
              (0.2, 0.5, 0.9), (0.5, 0.05, 0.3), (0.6, 0.3, 0.0), (1e-7, 0, 2e-7), (0.3, 0.6, 0.6),
              (0.1, 0.1, 0.05), (0.95, 0.9, 0.1)]
    x = torch.tensor(pixels, dtype=torch.float32).T.reshape(1, 3, 4, 5)
    return torch.cat([x, x.flip(3)])


def hwc(x):
    return x.permute(0, 2, 3, 1).double().numpy()


def reference(x, name, values):
    """The naive reference of sub-op `name`, per sample with its own value."""
    ref = REFS[NAMES.index(name)]
    return np.stack([ref(image, float(v)) for image, v in zip(hwc(x), values)])


KERNELS = dict(brightness=color.tf_brightness, contrast=color.tf_contrast, saturation=color.tf_saturation,
               hue=color.shift_hue)
VALUES = dict(brightness=[-0.4, 0.0, 0.25, 0.7], contrast=[0.6, 1.0, 1.4, -0.3],
              saturation=[0.8, 1.2, 1.9, -0.2], hue=[-0.1, 0.0, 0.37, -0.5])


@pytest.mark.parametrize("name", NAMES)
def test_each_tf_kernel_matches_its_naive_reference(name):
    for x in (random_images(), edge_images()):
        values = torch.tensor(VALUES[name][:len(x)])
        out = KERNELS[name](x, values)
        np.testing.assert_allclose(hwc(out), reference(x, name, values), atol=2e-6, rtol=0)
        assert out.min() >= 0 and out.max() <= 1


def test_tf_saturation_in_the_hue_kernel_matches_the_reference_and_the_direct_kernel():
    """`color.shift_hue` with a saturation factor (the device's HSV slots) is TF's saturation."""
    for x in (random_images(seed=2), edge_images()):
        f = torch.tensor(VALUES["saturation"][:len(x)])
        via_hue = color.shift_hue(x, torch.zeros(len(x)), saturation=f)
        np.testing.assert_allclose(hwc(via_hue), reference(x, "saturation", f), atol=2e-6, rtol=0)
        torch.testing.assert_close(via_hue, color.tf_saturation(x, f), atol=2e-6, rtol=0)


def test_tf_saturation_and_hue_commute_and_run_in_one_kernel():
    """Where the order puts them next to each other, the device runs both in one pass."""
    for x in (random_images(seed=3), edge_images()):
        f, t = torch.tensor(VALUES["saturation"][:len(x)]), torch.tensor(VALUES["hue"][::-1][:len(x)])
        both = hwc(color.shift_hue(x, t, saturation=f))
        for first, second in (("saturation", "hue"), ("hue", "saturation")):
            values = dict(saturation=f, hue=t)
            once = torch.from_numpy(reference(x, first, values[first])).permute(0, 3, 1, 2)
            np.testing.assert_allclose(both, reference(once, second, values[second]), atol=2e-6, rtol=0)


def test_tf_saturation_caps_the_factor_where_the_saturation_clips():
    """x_c' = v - f (v - x_c) holds while f s <= 1; past it the HSV saturation clips at 1 and the
    factor is v / (v - min) instead (hue kept): clamping v - f (v - x_c) at 0 would be wrong."""
    x = torch.tensor([0.9, 0.5, 0.2]).view(1, 3, 1, 1)  # v 0.9, s 0.78: f 1.4 clips
    f = torch.tensor([1.4])
    out = color.tf_saturation(x, f).flatten()
    expected = colorsys.hsv_to_rgb(*colorsys.rgb_to_hsv(0.9, 0.5, 0.2)[:1], 1.0, 0.9)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    naive = (0.9 - 1.4 * (0.9 - x.flatten())).clamp(0, 1)
    assert not torch.allclose(out, naive, atol=1e-2)
    # Below the clip it is the blend towards the max.
    mild = torch.tensor([1.1])
    torch.testing.assert_close(color.tf_saturation(x, mild).flatten(), 0.9 - 1.1 * (0.9 - x.flatten()))


def test_tf_hue_is_the_torchvision_hue():
    """tf.image.adjust_hue and torchvision's adjust_hue both add the shift to the HSV hue modulo
    1: one kernel serves both."""
    from sslpipe.pipeline.ops.color_jitter import KERNELS as BY_SEMANTICS
    assert BY_SEMANTICS["tf"][3] is BY_SEMANTICS["torchvision"][3] is color.shift_hue


def tf_view(size=12, name="v", **settings):
    jitter = ColorJitter(**{**TF, **settings})
    return ViewSpec.create(name=name, size=size, normalize=None, color_jitter=jitter)


def stages(views, batch):
    return (PhotometricStage(views, batch, "cpu"), PhotometricStage(views, batch, "cpu", strategy="select"))


def to_uint8(x):
    return (x * 255).round().to(torch.uint8)


def draws(n, order, on=None, **values):
    """Identity TF jitter parameters (delta 0, factors 1, hue 0) with `values` overriding."""
    p = dict(on=torch.ones(n, dtype=torch.bool) if on is None else torch.tensor(on),
             brightness=torch.zeros(n), contrast=torch.ones(n), saturation=torch.ones(n), hue=torch.zeros(n),
             order=torch.tensor(order).expand(n, 4).clone())
    p.update({k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()})
    return Draws({"color_jitter": p})


@pytest.mark.parametrize("name", NAMES)
def test_each_tf_sub_op_in_the_stage_matches_its_reference_on_both_strategies(name):
    imgs = to_uint8(random_images(3, seed=5))
    i = NAMES.index(name)
    order = [i] + [k for k in range(4) if k != i]
    value = VALUES[name][2]
    p = draws(3, order, on=[True, False, True], **{name: [value, 0.0 if i in (0, 3) else 1.0, -value / 2
                                                        if i in (0, 3) else 2 - value]})
    x = imgs.float() / 255
    expected = reference(x, name, p.ops["color_jitter"][name])
    for stage in stages([tf_view()], 3):
        out = hwc(stage.apply(imgs, p))
        np.testing.assert_allclose(out[[0, 2]], expected[[0, 2]], atol=2e-6, rtol=0)
        np.testing.assert_array_equal(out[1], hwc(x)[1])  # not jittered: exactly unchanged
        assert not np.allclose(out[0], hwc(x)[0], atol=1e-3)


def jitter_reference(imgs, p):
    """One sample at a time: the drawn sub-ops in the drawn order, each with its own clip."""
    out = hwc(imgs.float() / 255)
    for n in range(len(out)):
        if not p["on"][n]:
            continue
        for i in p["order"][n].tolist():
            out[n] = REFS[i](out[n], float(p[NAMES[i]][n]))
    return out


def test_the_whole_tf_jitter_follows_each_samples_order_on_host_device_and_compiled():
    torch._dynamo.reset()
    views = [tf_view(size=10, p=0.8), tf_view(size=10, name="w", p=0.8, saturation=0.2, hue=0.1)]
    imgs = to_uint8(random_images(32, size=10, seed=7))
    blocks, select = stages(views, 16)
    compiled = PhotometricStage(views, 16, "cpu", strategy="select", compile=True)
    d = blocks.sample(11)
    p = d.ops["color_jitter"]
    orders = {tuple(o) for o in p["order"][p["on"]].tolist()}
    assert 0 < int(p["on"].sum()) < 32 and len(orders) > 8
    adjacent = {abs(o.index(SATURATION) - o.index(HUE)) == 1 for o in orders}
    assert adjacent == {True, False}  # both layouts of the HSV slots: shared and separate
    expected = jitter_reference(imgs, p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [stage.apply(imgs, d) for stage in (blocks, select, compiled)]
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    for out in outs:
        np.testing.assert_allclose(hwc(out), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[0], outs[1], atol=2e-6, rtol=0)
    torch.testing.assert_close(outs[2], outs[1], atol=1e-5, rtol=0)
    # The order matters: the same parameters in the reverse order give other values.
    flipped = {**p, "order": p["order"].flip(1)}
    assert not np.allclose(jitter_reference(imgs, flipped), expected, atol=1e-3)


def test_tf_draws_follow_the_spec():
    view = tf_view(p=0.8, brightness=0.4, contrast=1.5, saturation=0.2, hue=0.1)
    stage = PhotometricStage([view], 4000, "cpu")
    p = stage.sample(0).ops["color_jitter"]
    on = p["on"]
    assert 0.77 < on.float().mean() < 0.83
    b, c, s, h = (p[name][on] for name in NAMES)
    assert -0.4 <= b.min() < -0.39 and 0.39 < b.max() <= 0.4 and abs(b.mean()) < 0.02  # a delta
    assert -0.5 <= c.min() < -0.45 and 2.45 < c.max() <= 2.5  # 1 +- 1.5, not clamped at 0 (as the reference)
    assert 0.8 <= s.min() < 0.81 and 1.19 < s.max() <= 1.2
    assert -0.1 <= h.min() < -0.09 and 0.09 < h.max() <= 0.1
    off = ~on
    assert (p["brightness"][off] == 0).all() and (p["contrast"][off] == 1).all()
    assert (p["saturation"][off] == 1).all() and (p["hue"][off] == 0).all()


def test_both_semantics_draw_the_same_random_numbers():
    """The switch changes how the op's numbers map to parameters, not its stream: with strengths
    <= 1 (no clamp at 0 bites) the factors are equal and the delta is torchvision's factor - 1."""
    tv = PhotometricStage([tf_view(semantics="torchvision")], 64, "cpu").sample(3).ops["color_jitter"]
    tf = PhotometricStage([tf_view()], 64, "cpu").sample(3).ops["color_jitter"]
    assert torch.equal(tv["on"], tf["on"]) and torch.equal(tv["order"], tf["order"])
    for name in ("contrast", "saturation", "hue"):
        torch.testing.assert_close(tf[name], tv[name])
    torch.testing.assert_close(tf["brightness"], tv["brightness"] - 1)


@pytest.mark.parametrize("semantics", ["torchvision", "tf"])
def test_every_order_lies_on_the_slots_in_order(semantics):
    slots, kinds = SLOTS[semantics], KINDS[semantics]
    table = _slot_table(slots, kinds)
    merged = 0
    for order in itertools.permutations(range(4)):
        code = sum(i << s for i, s in zip(order, (6, 4, 2, 0)))
        assert ColorJitterOp.order_of(code) == order
        steps = [i for i in table[code].tolist() if i >= 0]
        # Saturation and hue share a slot where they are next to each other (tf only), in either order.
        sat_hue = [i for i in order if i in (SATURATION, HUE)]
        assert [j for i in steps for j in (sat_hue if i == SATURATION_AND_HUE else [i])] == list(order)
        merged += SATURATION_AND_HUE in steps
        for at, i in enumerate(table[code].tolist()):
            if i >= 0:
                assert slots[at] == ("hsv" if i == SATURATION_AND_HUE else kinds[i])
    assert merged == (12 if semantics == "tf" else 0)
    assert slots.count("hsv") + slots.count("hue") == (2 if semantics == "tf" else 1)


def test_a_bad_semantics_is_an_error_naming_the_key():
    data = {"views": [{"name": "v", "size": 16, "color_jitter": {"p": 0.8, "semantics": "jax"}}]}
    with pytest.raises(SslpipeError, match=r"my\.yaml: views\[0\]\.color_jitter\.semantics: expected one of "
                                           r"torchvision, tf, got 'jax'"):
        parse_spec(data, "my.yaml")
    with pytest.raises(ValueError, match="semantics must be one of torchvision, tf, got 'TF'"):
        ColorJitter(semantics="TF")


def test_views_with_two_semantics_go_to_separate_stages():
    spec = parse_spec({"views": [{"name": "a", "size": 16, "color_jitter": {"semantics": "tf"}},
                                 {"name": "b", "size": 16, "color_jitter": True},
                                 {"name": "c", "size": 16, "color_jitter": {"semantics": "tf", "p": 0.5}}]})
    assert _size_groups(spec) == [(16, [0, 2]), (16, [1])]
    with pytest.raises(ValueError, match="must share one semantics, got .'tf', 'torchvision'."):
        PhotometricStage(spec.views, 2, "cpu")


def test_byol_uses_tf_semantics_and_the_default_stays_out_of_the_fingerprint():
    byol = load_spec("byol")
    assert [v.color_jitter.semantics for v in byol.views] == ["tf", "tf"]
    assert byol.views[0].to_dict()["color_jitter"]["semantics"] == "tf"
    mocov2 = load_spec("mocov2")
    assert mocov2.views[0].color_jitter.semantics == "torchvision"
    # A spec that does not name the switch writes the same plain data as before it existed.
    assert set(mocov2.views[0].to_dict()["color_jitter"]) == {"p", *NAMES}
    assert load_spec(byol).views[0].color_jitter == byol.views[0].color_jitter
