"""The photometric op table: each op's own random stream, registering a new op as one entry, the
flat YAML keys, and Kornia transforms as extension ops (checked, applied, resumed exactly)."""

from dataclasses import dataclass

import kornia
import numpy as np
import pytest
import torch
from pipeline_data import resized

from sslpipe.errors import SslpipeError
from sslpipe.pipeline import ops as ops_module
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.ops.base import PhotometricOp, probability
from sslpipe.pipeline.photometric import PhotometricStage
from sslpipe.pipeline.spec import ViewSpec, load_spec, parse_spec

N = 64


def images(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def test_adding_an_op_to_a_spec_leaves_the_other_ops_draws_unchanged():
    base = dict(name="v", size=16, color_jitter=1.0, blur=0.5)
    without = PhotometricStage([ViewSpec.create(**base)], N, "cpu").sample(7)
    with_more = PhotometricStage([ViewSpec.create(**base, grayscale=0.3, solarize=0.4)], N, "cpu").sample(7)
    assert set(with_more.ops) == {"color_jitter", "grayscale", "blur", "solarize"}
    for key in without.ops:
        for name, value in without.ops[key].items():
            assert torch.equal(value, with_more.ops[key][name]), (key, name)


@dataclass(frozen=True)
class Invert:
    """A toy op: 1 - x with probability p."""

    p: float = 0.5

    def __post_init__(self):
        probability("p", self.p)


class InvertOp(PhotometricOp):
    key, Settings = "invert", Invert

    def apply(self, x, params, key=None):
        return 1 - x


@pytest.fixture
def with_invert(monkeypatch):
    """The table with one more op, registered the way the docs say: one entry."""
    table = {**ops_module.OPS, "invert": InvertOp}
    for module in (
        "sslpipe.pipeline.ops",
        "sslpipe.pipeline.spec",
        "sslpipe.pipeline.photometric",
        "sslpipe.pipeline.loader",
    ):
        monkeypatch.setattr(f"{module}.OPS", table)
    return table


def test_a_new_op_is_one_entry_of_the_table(with_invert):
    spec = parse_spec(
        {"views": [{"name": "v", "size": 16, "color_jitter": True, "invert": 0.5, "normalize": None}]},
        "mine.yaml",
    )
    (view,) = spec.views
    assert view.invert == Invert(p=0.5) and view.to_dict()["invert"] == {"p": 0.5}
    stage = PhotometricStage(spec.views, N, "cpu", normalize=False)
    draws = stage.sample(3)
    assert 0 < int(draws.ops["invert"]["on"].sum()) < N
    # The table's other ops draw what they drew before the new op existed.
    before = PhotometricStage(
        [ViewSpec.create(name="v", size=16, color_jitter=True, normalize=None)], N, "cpu"
    )
    assert all(
        torch.equal(v, before.sample(3).ops["color_jitter"][k]) for k, v in draws.ops["color_jitter"].items()
    )
    x = images(N)
    out = stage.apply(x, draws)
    on = draws.ops["invert"]["on"]
    reference = before.apply(x, before.sample(3))
    torch.testing.assert_close(out[on], 1 - reference[on])
    assert torch.equal(out[~on], reference[~on])
    with pytest.raises(SslpipeError, match=r"mine.yaml: views\[0\].invert must be a probability"):
        parse_spec({"views": [{"name": "v", "size": 16, "invert": 2}]}, "mine.yaml")


def test_flat_yaml_keys_and_their_shorthands():
    (view,) = parse_spec(
        {
            "views": [
                {
                    "name": "v",
                    "size": 32,
                    "grayscale": 0.2,
                    "blur": True,
                    "solarize": 0.0,
                    "color_jitter": {"p": 0.5},
                }
            ]
        }
    ).views
    assert view.grayscale.p == 0.2 and view.blur.p == 0.5 and view.solarize is None
    assert view.color_jitter.p == 0.5 and view.color_jitter.brightness == 0.4
    assert [type(s).__name__ for s in view.ops] == ["ColorJitter", "Grayscale", "Blur"]  # table order
    with pytest.raises(
        SslpipeError,
        match=r"unknown key \(expected one of: name, size, .*color_jitter, "
        r"grayscale, blur, solarize, kornia\)",
    ):
        parse_spec({"views": [{"name": "v", "size": 32, "posterize": 0.2}]}, "mine.yaml")


# Kornia as the extension library.


def kornia_view(transforms, size=16, **extra):
    return {"views": [{"name": "v", "size": size, "kornia": transforms, "normalize": None, **extra}]}


def test_kornia_transforms_are_checked_when_the_spec_is_read():
    spec = parse_spec(kornia_view([{"RandomPosterize": {"bits": 3, "p": 0.5}}, "RandomEqualize"]))
    (view,) = spec.views
    assert [str(t) for t in view.kornia] == ["RandomPosterize(bits=3, p=0.5)", "RandomEqualize()"]
    assert view.random and view.to_dict()["kornia"] == [
        {"RandomPosterize": {"bits": 3, "p": 0.5}},
        {"RandomEqualize": {}},
    ]
    for transforms, message in [
        (["RandomPosterise"], r"views\[0\].kornia\[0\]: 'RandomPosterise' is not a 2D transform"),
        (
            [{"RandomPosterize": {"bitz": 3}}],
            r"views\[0\].kornia\[0\]: kornia.augmentation.RandomPosterize "
            r"refused its arguments: TypeError",
        ),
        ([{"RandomPosterize": {"bits": 3}, "RandomEqualize": {}}], r"kornia\[0\]: expected a transform name"),
        ("RandomEqualize", r"views\[0\].kornia: expected a list"),
        (["RandomMixUpV2"], "is not a 2D transform"),  # mixes images (and labels): no view augmentation
    ]:
        with pytest.raises(SslpipeError, match=message):
            parse_spec(kornia_view(transforms), "mine.yaml")


def test_a_kornia_transform_that_does_not_fit_the_view_is_refused_naming_the_spec(
    coordinate_shards, monkeypatch
):
    spec = parse_spec(kornia_view([{"RandomCrop": {"size": [8, 8]}}]), "mine.yaml")
    with pytest.raises(
        SslpipeError, match=r"mine.yaml: view 'v': kornia.augmentation.RandomCrop\(size=\(8, 8\)\) changes"
    ):
        ViewLoader(spec, coordinate_shards, batch_size=4)

    # A transform that fails on the view (one of Kornia's own checks) is refused the same way.
    def refuse(self, *args, **kwargs):
        raise RuntimeError("input too small")

    monkeypatch.setattr(kornia.augmentation.RandomInvert, "forward", refuse)
    spec = parse_spec(kornia_view(["RandomInvert"]), "mine.yaml")
    with pytest.raises(
        SslpipeError,
        match=r"mine.yaml: view 'v': kornia.augmentation.RandomInvert\(\) fails on a "
        r"16-px view: RuntimeError: input too small",
    ):
        ViewLoader(spec, coordinate_shards, batch_size=4)


def test_kornia_transforms_run_after_the_table_ops_seeded_by_the_batch():
    spec = parse_spec(kornia_view([{"RandomInvert": {"p": 1.0}}], solarize={"p": 1.0, "threshold": 0.5}))
    stage = PhotometricStage(spec.views, 8, "cpu", normalize=False)
    x = images(8)
    out = stage(x, 5)
    solarized = PhotometricStage(
        parse_spec(kornia_view([], solarize={"p": 1.0, "threshold": 0.5})).views, 8, "cpu", normalize=False
    )(x, 5)
    # The table's solarize first, then the Kornia transform (the other order gives other values).
    torch.testing.assert_close(out, kornia.enhance.invert(solarized))
    inverted_first = 1 - x.float() / 255
    inverted_first = torch.where(inverted_first >= 0.5, 1 - inverted_first, inverted_first)
    assert not torch.allclose(out, inverted_first)

    random = PhotometricStage(parse_spec(kornia_view([{"RandomErasing": {"p": 0.5}}])).views, 32, "cpu")
    state = torch.get_rng_state()
    a, b, c = random(images(32), 1), random(images(32), 1), random(images(32), 2)
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator is left as it was
    assert torch.equal(a, b) and not torch.equal(a, c)
    erased = (a == 0).flatten(1).float().mean(1) > 0.01
    assert 0 < int(erased.sum()) < 32  # p = 0.5, drawn per sample


def test_kornia_transforms_on_one_view_leave_the_other_views_of_its_stage_alone():
    spec = parse_spec(
        {
            "views": [
                {"name": "a", "size": 16, "normalize": None, "kornia": [{"RandomInvert": {"p": 1.0}}]},
                {"name": "b", "size": 16, "normalize": None},
            ]
        }
    )
    stage = PhotometricStage(spec.views, 4, "cpu")
    x = images(8)
    out = stage(x, 0)
    torch.testing.assert_close(out[:4], 1 - x[:4].float() / 255)
    assert torch.equal(out[4:], x[4:].float() / 255)


def test_a_spec_with_kornia_transforms_loads_end_to_end_and_resumes_exactly(coordinate_shards):
    spec = load_spec(resized("mocov2", 24))
    spec = parse_spec(
        {
            "views": [
                {
                    **spec.groups[0].to_dict(),
                    "kornia": [{"RandomPosterize": {"bits": 3, "p": 0.5}}, {"RandomSharpness": {"p": 0.5}}],
                }
            ]
        },
        "k.yaml",
    )
    reference = ViewLoader(spec, coordinate_shards, batch_size=8, seed=4)
    stream = [[v.clone() for v in batch.views] for batch in reference]
    first = ViewLoader(spec, coordinate_shards, batch_size=8, seed=4)
    for _, _ in zip(range(6), first):
        pass
    resumed = ViewLoader(spec, coordinate_shards, batch_size=8, seed=4)
    resumed.load_state_dict(first.state_dict())
    rest = [batch.views for batch in resumed]
    assert len(rest) == len(stream) - 6
    for expected, got in zip(stream[6:], rest):
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    plain = ViewLoader(load_spec(resized("mocov2", 24)), coordinate_shards, batch_size=8, seed=4)
    assert not torch.equal(next(iter(plain)).views[0], stream[0][0])  # the Kornia ops did something
