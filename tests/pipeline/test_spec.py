"""Pipeline specs: the shipped YAMLs carry REFERENCE.md's values; bad specs name file and key."""

import pytest

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.spec import Blur, ColorJitter, Grayscale, load_spec, parse_spec, shipped_specs

SHIPPED_NAMES = ["simclr", "mocov2", "byol", "mocov3", "triplet", "instdisc", "invaspread", "cmc",
                 "swav_multicrop", "eval", "finetune", "demo_simclr", "small_simclr", "small_mocov2",
                 "small_swav_multicrop", "small_byol", "small_mocov3", "small_triplet", "small_instdisc",
                 "small_invaspread", "small_cmc", "rotnet", "relative_loc", "jigsaw", "dae", "cpc",
                 "small_rotnet", "small_relative_loc", "small_jigsaw", "small_dae", "small_cpc",
                 "colorization", "small_colorization"]


def test_every_shipped_spec_loads_and_none_is_missing():
    shipped = shipped_specs()
    assert sorted(shipped) == sorted(SHIPPED_NAMES)
    for name in SHIPPED_NAMES:
        spec = load_spec(name)
        assert spec.name == name and spec.source.endswith(f"{name}.yaml")
        assert load_spec(shipped[name]) == spec


def test_shipped_values_follow_the_reference_table():
    simclr = load_spec("simclr")
    (view,) = simclr.groups
    assert (view.count, view.size, view.scale, view.flip, view.grayscale.p) == (2, 224, (0.08, 1.0), 0.5, 0.2)
    assert view.color_jitter == ColorJitter(p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
    assert view.blur == Blur(p=0.5, sigma=(0.1, 2.0)) and view.blur.kernel_for(view.size) == 23
    assert view.solarize is None

    (moco,) = load_spec("mocov2").groups
    assert moco.scale == (0.2, 1.0)
    assert moco.color_jitter == ColorJitter(p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)

    byol = load_spec("byol")
    one, two = byol.groups
    assert (one.blur.p, two.blur.p) == (1.0, 0.1)
    assert one.solarize is None and (two.solarize.p, two.solarize.threshold) == (0.2, 0.5)
    assert one.color_jitter == two.color_jitter == ColorJitter(0.8, 0.4, 0.4, 0.2, 0.1, semantics="tf")
    assert one.interpolation == two.interpolation == "bicubic"

    swav = load_spec("swav_multicrop")
    assert [(g.count, g.size, g.scale) for g in swav.groups] == [(2, 224, (0.14, 1.0)), (6, 96, (0.05, 0.14))]
    assert [v.size for v in swav.views] == [224] * 2 + [96] * 6
    # The official code blurs the 96-px crops as the 224-px ones (not with 10% of 96 px = 9 taps).
    assert [g.blur.kernel_for(g.size) for g in swav.groups] == [23, 23]

    (center,) = load_spec("eval").groups
    assert (center.crop, center.resize_to, center.size, center.flip) == ("center", 256, 224, 0.0)
    assert center.color_jitter is None and center.blur is None and not load_spec("eval").random
    # At another size (the small recipes' eval.size): the same share of the image.
    (small,) = load_spec("eval", size=64).groups
    assert (small.crop, small.resize_to, small.size, small.flip) == ("center", 73, 64, 0.0)
    assert load_spec("eval", size=64).name == "eval@64"
    for size in (224, 64):
        (crop,) = load_spec("finetune", size=size).groups
        assert (crop.size, crop.scale, crop.flip, crop.color_jitter) == (size, (0.08, 1.0), 0.5, None)
    # The small (CIFAR-scale) versions: colour jitter of strength 0.5 and no blur.
    for name in ("small_simclr", "small_mocov2", "small_swav_multicrop"):
        for group in load_spec(name).groups:
            assert group.color_jitter == ColorJitter(0.8, 0.4, 0.4, 0.4, 0.1)
            assert group.blur is None and group.grayscale == Grayscale(0.2) and group.flip == 0.5
    assert [(g.count, g.size) for g in load_spec("small_swav_multicrop").groups] == [(2, 64), (4, 32)]
    (colorization,) = load_spec("colorization").groups
    assert (colorization.size, colorization.scale, colorization.flip) == (176, (0.47, 0.47), 0.5)
    assert colorization.ops == () and colorization.kornia == ()   # no colour jitter: it is the target
    for spec in map(load_spec, SHIPPED_NAMES):
        assert all(v.normalize.mean == (0.485, 0.456, 0.406) for v in spec.views)
        # Jigsaw's crops are squares (the references resize, then crop 255 x 255), as colorization's
        # (176 x 176 of images stored at 256 x 256).
        square = "jigsaw" in spec.name or spec.name == "colorization"
        ratio = (1.0, 1.0) if square else (3 / 4, 4 / 3)
        assert all(v.ratio == pytest.approx(ratio) for v in spec.views)


def view(**extra):
    return {"views": [{"name": "v", "size": 32, **extra}]}


@pytest.mark.parametrize("data, message", [
    (view(huee=1), "views[0].huee: unknown key"),
    (view(color_jitter={"huee": 0.1}), "views[0].color_jitter.huee: unknown key"),
    (view(scale=[0.0, 1.0]), "scale must be"),
    (view(scale=[0.5, 1.5]), "scale must be"),
    (view(scale=[0.9, 0.2]), "scale must be"),
    (view(flip=1.5), "flip must be a probability"),
    (view(grayscale=-0.1), "grayscale must be a probability"),
    (view(color_jitter={"p": 2}), "views[0].color_jitter: p must be a probability"),
    (view(color_jitter={"hue": 0.7}), "hue must be in [0, 0.5]"),
    (view(blur={"kernel_size": 4}), "kernel_size must be a positive odd number"),
    (view(blur={"sigma": [0, 1]}), "sigma must be"),
    (view(solarize={"threshold": 2}), "threshold must be a probability"),
    (view(normalize={"std": [1, 0, 1]}), "std must be > 0"),
    (view(size="big"), "views[0].size: expected an integer"),
    (view(scale=0.5), "views[0].scale: expected a list of 2 numbers"),
    (view(crop="middle"), "views[0].crop: expected one of random, center"),
    (view(count=0), "count must be >= 1"),
    (view(crop="center", resize=16), "resize (16) must be >= size (32)"),
    ({"views": [{"size": 32}]}, "views[0].name: required"),
    ({"views": []}, "at least one view"),
    ({"views": [{"name": "a", "size": 8}, {"name": "a", "size": 8}]}, "view names must be unique"),
    ({"view": []}, "unknown key 'view'"),
    ([1, 2], "a mapping with 'name' and 'views'"),
])
def test_bad_specs_name_the_file_and_key(data, message):
    with pytest.raises(SslpipeError) as error:
        parse_spec(data, "my.yaml")
    assert str(error.value).startswith("my.yaml: ") and message in str(error.value)


def test_switches_and_defaults():
    spec = parse_spec(view(blur=True, solarize=False, color_jitter=None), "x.yaml")
    (v,) = spec.groups
    assert v.blur == Blur() and v.solarize is None and v.color_jitter is None and spec.name == "x"
    assert v.blur.kernel_for(v.size) == 3  # never below 3 for small views


def test_spec_file_errors(tmp_path):
    with pytest.raises(SslpipeError, match="no pipeline spec named 'simclrr'.*simclr"):
        load_spec("simclrr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("views: [\n")
    with pytest.raises(SslpipeError, match="bad.yaml: not valid YAML"):
        load_spec(bad)
    with pytest.raises(SslpipeError, match="missing.yaml: cannot read"):
        load_spec(tmp_path / "missing.yaml")
